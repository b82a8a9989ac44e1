"""Loading a settings file that must be refused."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.settings import ConfigError, load_settings


def config_error(path: Path, text: str) -> str:
    """The ConfigError message of loading `text` written to `path` (no environment overrides); the test
    fails if it loads."""
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    return str(err.value)
