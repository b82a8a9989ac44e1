"""What the wrapper trusts in Consul, in process: registrations are validated before they are routed to,
`wrapper.routes` decides which services may serve a model, a failing table update does not end a watch,
and a worker's /health answers only for its own service id."""
from __future__ import annotations

import asyncio
import logging

import pytest
from starlette.testclient import TestClient

from common.settings import ConsulSettings, Settings, WorkerSettings, WrapperSettings, load_settings
from generators.echo import EchoGen
from svc_mgr import Discovery, Instance, Registration, RouteRules, RoutingTable
from svc_mgr.consul_client import Answer
from svc_mgr.entry import (
    MARKER_TAG,
    MAX_MODEL_NAME_LENGTH,
    MAX_MODELS_PER_INSTANCE,
    EntryReader,
    instance_from_health,
    model_tags,
)
from tests.support.config import config_error
from worker.app import Worker


def entry(address="127.0.0.1", port=9000, models=("m",), id="svc-1", service="svc", **extra):
    svc = {"ID": id, "Service": service, "Address": address, "Port": port, "Tags": model_tags(models), **extra}
    return {"Node": {"Address": "10.9.9.9"}, "Service": svc}


def inst(service: str, i: int = 1, models=("m",)) -> Instance:
    return Instance(id=f"{service}-{i}", service=service, address="127.0.0.1", port=9000 + i, models=tuple(models))


# ---- what a registration may claim -----------------------------------------------------------------

@pytest.mark.parametrize("good", [
    entry(), entry(address="::1"), entry(address="worker-3.example.internal"), entry(address="worker."),
    entry(port=1), entry(port=65535), entry(models=["x" * MAX_MODEL_NAME_LENGTH, "org/model:v1", "b=c", "modèle"]),
    entry(models=[f"m{i}" for i in range(MAX_MODELS_PER_INSTANCE)]), entry(models=()),
])
def test_sane_registrations_are_read(good):
    assert isinstance(instance_from_health(good), Instance)


def test_an_empty_address_falls_back_to_the_node_address():
    assert instance_from_health(entry(address="")).base_url == "http://10.9.9.9:9000"
    assert instance_from_health(entry(address="::1")).base_url == "http://[::1]:9000"


@pytest.mark.parametrize("bad", [
    entry(port=0), entry(port=70000), entry(port=-5), entry(port="9000"), entry(port=True), entry(port=None),
    entry(address="127.0.0.1/evil"), entry(address="user@127.0.0.1"), entry(address="127.0.0.1:80"),
    entry(address="http://127.0.0.1"), entry(address="127.0.0.1?x=1"), entry(address="127.0.0.1#f"),
    entry(address="a b"), entry(address="fe80::1%eth0"), entry(address="-bad-.example"), entry(address="a" * 64),
    entry(address=7), entry(address="999.0.0.1"), entry(address="127.1.1"), entry(models=["a b"]), entry(models=["x" * (MAX_MODEL_NAME_LENGTH + 1)]),
    entry(models=["tab\there"]), entry(models=["nl\n"]), entry(models=["nul\x00"]), entry(models=[""]),
    entry(models=[f"m{i}" for i in range(MAX_MODELS_PER_INSTANCE + 1)]),
    entry(id=None), entry(id=""), entry(id=["x"]), entry(service=None),
    {"Service": {"Service": "svc", "Port": 1, "Tags": [MARKER_TAG]}},  # no ID
])
def test_malformed_registrations_are_none_never_an_exception(bad):
    assert instance_from_health(bad) is None


@pytest.mark.parametrize("foreign", [None, [], {}, {"Service": None}, {"Service": {"Tags": None}},
                                     {"Service": {"Tags": "openai-api-wrapper"}}, entry(models=()) | {"Service": {}}])
def test_entries_that_are_not_ours_are_none(foreign):
    assert instance_from_health(foreign) is None


def test_a_bad_entry_is_warned_about_once_per_service_id(caplog):
    read = EntryReader()
    with caplog.at_level(logging.WARNING, logger="svc_mgr.entry"):
        for _ in range(5):  # every Consul update reads every entry again
            assert read(entry(port=0, id="svc-a")) is None
            assert read(entry(address="user@h", id="svc-b")) is None
            assert read(entry(id=["unhashable"])) is None
            assert read(entry(id="svc-ok")) is not None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "svc-a" in lines[0] and "port 0" in lines[0]
    assert "svc-b" in lines[1] and "user@h" in lines[1]


# ---- wrapper.routes ------------------------------------------------------------------------------

def test_a_rule_keeps_other_services_off_the_model_with_one_warning(caplog):
    table = RoutingTable(rules=RouteRules({"echo": ["legit"]}))
    with caplog.at_level(logging.WARNING, logger="svc_mgr.routes"):
        table.set_service("legit", [inst("legit", 1, ("echo",))])
        for i in range(5):  # repeated Consul updates of the rogue service
            table.set_service("rogue", [inst("rogue", j, ("echo", "other")) for j in range(i + 1)])
    assert [i.service for i in table.instances("echo")] == ["legit"]
    assert {table.pick("echo").service for _ in range(50)} == {"legit"}
    assert {i.service for i in table.instances("other")} == {"rogue"}  # no rule for it
    refused = [r.getMessage() for r in caplog.records if "'echo'" in r.getMessage()]
    assert len(refused) == 1 and "'rogue'" in refused[0], refused


def test_a_model_only_unlisted_services_claim_is_not_routable_nor_known():
    table = RoutingTable(rules=RouteRules({"echo": ["legit"]}))
    table.set_service("rogue", [inst("rogue", 1, ("echo",))])
    assert table.pick("echo") is None and "echo" not in table.models() and "echo" not in table.known_models


def test_globs_match_and_a_models_own_name_wins():
    rules = RouteRules({"gpt-*": ["proxy"], "gpt-4o": ["local"], "llama-[0-9]*": ["gpu-a", "gpu-b"]})
    assert rules.allowed("gpt-3.5") == {"proxy"}
    assert rules.allowed("gpt-4o") == {"local"}
    assert rules.allowed("llama-3") == {"gpu-a", "gpu-b"}
    assert rules.allowed("llama-x") is None and rules.allowed("GPT-3.5") is None  # case-sensitive
    table = RoutingTable(rules=rules)
    table.set_service("proxy", [inst("proxy", 1, ("gpt-3.5", "gpt-4o"))])
    table.set_service("local", [inst("local", 2, ("gpt-4o", "gpt-3.5"))])
    assert [i.service for i in table.instances("gpt-4o")] == ["local"]
    assert [i.service for i in table.instances("gpt-3.5")] == ["proxy"]


def test_without_a_rule_two_services_of_one_model_warn_once_and_share_it(caplog):
    table = RoutingTable()
    with caplog.at_level(logging.WARNING, logger="svc_mgr.routes"):
        table.set_service("a", [inst("a", 1), inst("a", 2)])
        assert not caplog.records  # instances of one service are no conflict
        for _ in range(3):
            table.set_service("b", [inst("b", 3)])
    assert {i.service for i in table.instances("m")} == {"a", "b"}
    assert len(caplog.records) == 1 and "'a'" not in caplog.records[0].getMessage()
    assert "a, b" in caplog.records[0].getMessage() and "'m'" in caplog.records[0].getMessage()


def test_routes_must_be_strings_and_a_mistake_names_the_key(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text("wrapper:\n  routes:\n    'gpt-*': [proxy]\n    echo: [legit, other]\n")
    assert load_settings(path, environ={}).wrapper.routes == {"gpt-*": ["proxy"], "echo": ["legit", "other"]}
    for text, key in [("echo: legit", "wrapper.routes.echo"), ("echo: [1]", "wrapper.routes.echo.0"),
                      ("1: [legit]", "wrapper.routes.1"), ("echo: ['']", "wrapper.routes.echo.0"),
                      ("echo:", "wrapper.routes.echo")]:
        message = config_error(path, f"wrapper:\n  routes:\n    {text}\n")
        assert str(path) in message and key in message, message


# ---- the watch survives ----------------------------------------------------------------------------

class _Consul:
    """Consul's blocking reads, one answer after another (then it blocks, as Consul does)."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = list(answers)
        self.index = 0

    async def read(self, path, index=None, wait=None, params=None) -> Answer:
        if not self.answers:
            await asyncio.Event().wait()
        self.index += 1
        return Answer(index=self.index, raw=self.answers.pop(0), filtered_by_acls=False)


def test_a_failing_table_update_is_logged_once_and_the_watch_goes_on(caplog):
    discovery = Discovery(ConsulSettings(), RoutingTable(), WrapperSettings(consul_min_interval=0))
    discovery._consul = _Consul([b"[1]", b"[2]", b"[3]"])  # type: ignore[assignment]
    applied: list[bytes] = []

    async def apply(answer: Answer, reconnected: bool) -> None:
        if len(applied) < 2:
            applied.append(answer.raw)
            raise RuntimeError("a bug in a table update")
        applied.append(answer.raw)

    async def watch() -> None:
        task = asyncio.create_task(discovery._watch("/v1/health/state/any", {}, apply, asyncio.Event()))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(applied) == 3:
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with caplog.at_level(logging.WARNING):
        asyncio.run(watch())
    assert applied == [b"[1]", b"[2]", b"[3]"]  # the watch went on after two failing updates
    errors = [r for r in caplog.records if "could not apply Consul's answer" in r.getMessage()]
    assert len(errors) == 1


# ---- the worker answers its check only for its own id ---------------------------------------------

def test_health_with_an_id_is_healthy_only_for_the_workers_own_service_id():
    worker = Worker(EchoGen(models=["m"]), Settings(), service_id="echo-127.0.0.1-9000")
    with TestClient(worker.app()) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/health", params={"id": "echo-127.0.0.1-9000"}).status_code == 200
        wrong = client.get("/health", params={"id": "echo-127.0.0.1-9001"})
        assert wrong.status_code == 503 and wrong.json()["error"]["code"] == "wrong_instance"
        assert client.get("/health", params={"id": ""}).status_code == 503


def test_the_registered_check_asks_for_the_registrations_own_id():
    registration = Registration(ConsulSettings(), WorkerSettings(), name="echo", host="127.0.0.1", port=9000,
                                models=["m"], health_url="http://127.0.0.1:9000/health")
    assert registration.check_url == "http://127.0.0.1:9000/health?id=echo-127.0.0.1-9000"
