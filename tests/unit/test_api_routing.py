"""Routing every model-addressed endpoint (#11), in process: forms read by the streaming parser,
capabilities in the registration and the routing table, the new endpoints' body checks, openai_worker's
--capabilities. End to end: tests/e2e/test_api_surface.py."""
from __future__ import annotations

import httpx
import pytest

from common.errors import InvalidRequest
from common.multipart import MAX_FIELD_BYTES, admit_form, read_form, replace_field
from common.settings import LimitSettings
from common.wire import LEGACY_CAPABILITIES, PATHS, Capability, check_fields, require_routing_fields
from generators.openai_upstream import UPSTREAM_PATHS, parse_capabilities
from svc_mgr import Instance, RoutingTable
from svc_mgr.entry import capabilities_from_tags, instance_from_health, model_tags

LIMITS = LimitSettings()
AUDIO = b"RIFF\r\n--not-a-boundary\r\n" * 100


def form(fields: dict, files: dict | None = None) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", data=fields, files={"file": ("a.wav", AUDIO)} if files is None else files)
    return request.read(), request.headers["content-type"]


def refused(call, *args) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as err:
        call(*args)
    return err.value


# ---- forms -----------------------------------------------------------------------------------------

def test_a_form_yields_its_text_fields_and_skips_its_files():
    raw, content_type = form({"model": "whisper", "language": "en", "stream": "true"})
    read = read_form(raw, content_type)
    assert read.fields == {"model": "whisper", "language": "en", "stream": "true"}
    assert read.files == {"file"}
    body, model = admit_form(raw, content_type, Capability.TRANSCRIPTION)
    assert (model, body["stream"]) == ("whisper", True)


def test_a_forms_model_is_replaced_in_place_every_other_byte_kept():
    raw, content_type = form({"model": "short", "prompt": "p"})
    renamed = replace_field(raw, content_type, "model", "a-much-longer-name")
    assert renamed == raw.replace(b"short", b"a-much-longer-name")
    assert read_form(renamed, content_type).fields["model"] == "a-much-longer-name"


@pytest.mark.parametrize("content_type, code", [
    ("application/json", "invalid_content_type"), (None, "invalid_content_type"),
    ("multipart/form-data", "invalid_multipart"),  # no boundary
])
def test_a_body_that_is_not_a_form_is_refused(content_type, code):
    raw, _ = form({"model": "m"})
    assert refused(admit_form, raw, content_type, Capability.TRANSCRIPTION).code == code


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.99])
def test_a_truncated_or_garbled_form_is_invalid_multipart(cut):
    raw, content_type = form({"model": "m"})
    assert refused(read_form, raw[: int(len(raw) * cut)], content_type).code == "invalid_multipart"
    assert refused(read_form, b"garbage" + raw, content_type).code == "invalid_multipart"


@pytest.mark.parametrize("fields, files, param, code", [
    ({"language": "en"}, None, "model", "missing_required_parameter"),
    ({}, {"model": ("m", b"x"), "file": ("a.wav", AUDIO)}, "model", "invalid_type"),
    ({"model": "m"}, {"audio": ("a.wav", AUDIO)}, "file", "missing_required_parameter"),
    ({"model": "m", "stream": "maybe"}, None, "stream", "invalid_type"),
    ({"model": "m", "prompt": "x" * (MAX_FIELD_BYTES + 1)}, None, "prompt", "invalid_value"),
])
def test_a_forms_routing_fields_are_checked(fields, files, param, code):
    raw, content_type = form(fields, files)
    err = refused(admit_form, raw, content_type, Capability.TRANSCRIPTION)
    assert (err.param, err.code) == (param, code)


def test_an_image_edit_takes_the_sdks_array_of_images():
    raw, content_type = form({"model": "m", "prompt": "p"}, {"image[]": ("a.png", b"png")})
    assert admit_form(raw, content_type, Capability.IMAGE_EDIT)[1] == "m"


# ---- the new endpoints' JSON checks ------------------------------------------------------------------

@pytest.mark.parametrize("capability, body, param", [
    (Capability.RESPONSES, {"input": 5}, "input"),
    (Capability.RESPONSES, {"input": "x", "max_output_tokens": "many"}, "max_output_tokens"),
    (Capability.SPEECH, {"input": ["x"]}, "input"),
    (Capability.SPEECH, {"input": "x", "speed": 9}, "speed"),
    (Capability.IMAGE_GENERATION, {"prompt": "x", "n": 11}, "n"),
    (Capability.MODERATION, {"input": []}, "input"),
    (Capability.RERANK, {"query": "q", "documents": []}, "documents"),
    (Capability.SCORE, {"text_1": 1, "text_2": "b"}, "text_1"),
])
def test_the_new_endpoints_fields_are_checked(capability, body, param):
    assert refused(check_fields, {"model": "m", **body}, capability, LIMITS).param == param


def test_state_from_an_earlier_response_is_refused():
    err = refused(require_routing_fields, {"model": "m", "input": "x", "previous_response_id": "r"},
                  Capability.RESPONSES)
    assert (err.param, err.code) == ("previous_response_id", "unsupported_parameter")


def test_every_capability_has_a_path_and_openai_worker_relays_it():
    assert set(PATHS) == set(Capability)
    assert all(UPSTREAM_PATHS[c] == PATHS[c].removeprefix("/v1") for c in Capability)


# ---- capabilities in the registration ----------------------------------------------------------------

def test_capabilities_round_trip_through_one_tag():
    tags = model_tags(["a", "b"], [Capability.SPEECH, Capability.CHAT])
    assert [t for t in tags if t.startswith("caps=")] == ["caps=chat,speech"]
    assert capabilities_from_tags(tags) == {Capability.CHAT, Capability.SPEECH}
    entry = {"Service": {"ID": "x-1", "Service": "x", "Address": "10.0.0.1", "Port": 1, "Tags": tags}}
    assert instance_from_health(entry).capabilities == {Capability.CHAT, Capability.SPEECH}


def test_an_entry_without_capabilities_serves_the_legacy_three_and_unknown_names_are_ignored():
    assert capabilities_from_tags(model_tags(["a"])) == LEGACY_CAPABILITIES
    assert capabilities_from_tags([*model_tags(["a"]), "caps=chat,teleport"]) == {Capability.CHAT}
    assert capabilities_from_tags([*model_tags(["a"]), "caps="]) == frozenset()


def inst(i: int, capabilities, model="m") -> Instance:
    return Instance(id=f"svc-{i}", service="svc", address="127.0.0.1", port=9000 + i, models=(model,),
                    capabilities=frozenset(capabilities))


def test_the_table_knows_what_each_model_serves():
    table = RoutingTable()
    table.set_service("svc", [inst(1, [Capability.CHAT, Capability.SPEECH])])
    assert table.serves("m", Capability.SPEECH)
    assert not table.serves("m", Capability.RERANK)
    assert table.serves("unknown", Capability.RERANK)  # no instances: the hop answers 404 or 503


def test_a_model_whose_instances_differ_is_picked_among_those_that_serve_the_endpoint():
    table = RoutingTable()
    chat_only, both = inst(1, [Capability.CHAT]), inst(2, [Capability.CHAT, Capability.SPEECH])
    table.set_service("svc", [chat_only, both])
    assert table.serves("m", Capability.SPEECH)
    assert {table.pick("m", capability=Capability.SPEECH).id for _ in range(50)} == {both.id}
    assert {table.pick("m", capability=Capability.CHAT).id for _ in range(200)} == {chat_only.id, both.id}
    assert table.pick("m", exclude=[both], capability=Capability.SPEECH) is None


def test_a_changed_capability_replaces_the_instance():
    table = RoutingTable()
    table.set_service("svc", [inst(1, [Capability.CHAT])])
    table.set_service("svc", [inst(1, [Capability.CHAT, Capability.SPEECH])])
    assert table.serves("m", Capability.SPEECH)


# ---- openai_worker --capabilities --------------------------------------------------------------------

def test_openai_worker_capabilities_option():
    assert parse_capabilities(None) == frozenset(Capability)
    assert parse_capabilities("all") == frozenset(Capability)
    assert parse_capabilities("chat, speech") == {Capability.CHAT, Capability.SPEECH}
    with pytest.raises(ValueError, match="teleport"):
        parse_capabilities("chat,teleport")
