"""Helpers for the tests: processes, servers, the OpenAI spec, and generators the workers load by dotted path
(`tests.support.fault_generators.AsyncTickGen`). Nothing here is a test; keep imports light, since worker
subprocesses import this package."""
