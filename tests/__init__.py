"""The test suite: `unit/` runs in process, `e2e/` starts real processes; helpers live in `support/`."""
