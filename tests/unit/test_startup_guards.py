"""common.cli: --require-auth sets security.strict; strict mode refuses a missing security setting, the
default mode warns about it once (the processes themselves: tests/e2e/test_defaults.py)."""
from __future__ import annotations

import logging

import pytest

from common.cli import Guard, base_parser, check_guards, setup
from common.settings import ConfigError, SecuritySettings, Settings

STRICT = Settings(security=SecuritySettings(strict=True))
KEYS = Guard("wrapper.api_keys (or wrapper.api_keys_file)", False, "no API keys configured")
SECRET = Guard("worker.secret (or WORKER_SECRET)", False, "no worker secret set")


def test_strict_mode_names_every_missing_setting():
    with pytest.raises(ConfigError) as err:
        check_guards([KEYS, SECRET], STRICT)
    assert "--require-auth" in str(err.value)
    assert "wrapper.api_keys (or wrapper.api_keys_file); worker.secret (or WORKER_SECRET)" in str(err.value)


def test_strict_mode_passes_when_everything_is_set(caplog):
    check_guards([Guard("worker.secret (or WORKER_SECRET)", True, "unused")], STRICT)
    assert not caplog.records


def test_the_default_mode_warns_once_for_each_missing_setting(caplog):
    with caplog.at_level(logging.WARNING):
        check_guards([KEYS, SECRET, Guard("x", True, "not logged")], Settings())
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 2
    assert "no API keys configured; set wrapper.api_keys" in caplog.records[0].getMessage()
    assert "no worker secret set; set worker.secret (or WORKER_SECRET)" in caplog.records[1].getMessage()


def test_require_auth_turns_strict_mode_on(tmp_path):
    config = tmp_path / "env.yaml"
    config.write_text("")
    parser = base_parser("test", "test")
    assert not setup(parser.parse_args(["127.0.0.1", "1", "--config", str(config)])).security.strict
    assert setup(parser.parse_args(["127.0.0.1", "1", "--config", str(config), "--require-auth"])).security.strict
    config.write_text("security:\n  strict: true\n")
    assert setup(parser.parse_args(["127.0.0.1", "1", "--config", str(config)])).security.strict
