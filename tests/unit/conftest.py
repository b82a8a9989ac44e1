"""Unit tests run in process: starting a subprocess here is a bug, so it fails the test."""
from __future__ import annotations

import subprocess

import pytest


@pytest.fixture(autouse=True)
def no_subprocesses(monkeypatch):
    def refuse(self, args, *_, **__):
        raise AssertionError(f"a unit test started a process: {args!r}; move it to tests/e2e/")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
