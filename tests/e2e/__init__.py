"""Tests with real processes: a Consul dev agent, workers and wrappers on free loopback ports (marked `e2e`)."""
