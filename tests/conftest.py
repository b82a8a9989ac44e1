"""Fixtures and hooks only; helpers are in tests/support/."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.procs import Consul, Procs
from tests.support.schemas import Schemas
from tests.support.servers import Server, start_wrapper

E2E_DIR = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(config, items):
    """Every test under tests/e2e/ starts real processes: mark it `e2e` (select with -m e2e / -m "not e2e")."""
    for item in items:
        if Path(item.path).resolve().is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request) -> bool:
    return any(getattr(request.node, f"rep_{w}", None) is not None and getattr(request.node, f"rep_{w}").failed
               for w in ("setup", "call"))


@pytest.fixture(scope="session")
def session_procs():
    procs = Procs()
    yield procs
    procs.stop_all()


@pytest.fixture(scope="session")
def consul(session_procs) -> Consul:
    return Consul(session_procs)


@pytest.fixture
def procs(request):
    procs = Procs()
    yield procs
    if _failed(request):
        print(procs.dump())
    procs.stop_all()


@pytest.fixture(scope="module")
def module_procs():
    procs = Procs()
    yield procs
    procs.stop_all()


@pytest.fixture(scope="module")
def wrapper(module_procs, consul) -> Server:
    return start_wrapper(module_procs, consul)


@pytest.fixture(scope="session")
def schemas() -> Schemas:
    return Schemas()


@pytest.fixture(scope="module")
def upstream():
    """A local OpenAI-compatible server standing in for an internet API (tests/support/fake_upstream.py)."""
    fake = FakeUpstream().start()
    yield fake
    fake.stop()
