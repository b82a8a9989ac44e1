"""Service management: Consul registration for workers, discovery and routing for the wrapper."""
from .discovery import Discovery
from .entry import Instance
from .registration import ConsulUnreachable, Registration
from .routing import POLICIES, RoutingTable

__all__ = ["ConsulUnreachable", "Discovery", "Instance", "POLICIES", "Registration", "RoutingTable"]
