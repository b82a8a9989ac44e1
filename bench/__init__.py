"""The benchmark of issue #5: run `python -m bench.run` from the repository root (see bench/run.py)."""
