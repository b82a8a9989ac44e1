"""Service management: Consul registration for workers, discovery and routing for the wrapper."""
from .discovery import Discovery
from .entry import Instance
from .registration import ConsulUnreachable, Registration
from .routes import RouteRules
from .routing import POLICIES, RoutingTable

__all__ = ["ConsulUnreachable", "Discovery", "Instance", "POLICIES", "Registration", "RouteRules", "RoutingTable"]
