"""A generator for routing tests: EchoGen whose answers name the instance that made them."""
from __future__ import annotations

import argparse
from typing import Any

from generators.echo import EchoGen


class WhoGen(EchoGen):
    """Answers `[NAME] ` + the last user message, so a test sees which worker served each request."""

    def __init__(self, models=None, name: str = "?", **options: Any) -> None:
        super().__init__(models, **options)
        self.name = name

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--name", default="?")

    def _last_user_text(self, request: dict[str, Any]) -> str:
        return f"[{self.name}] {super()._last_user_text(request)}"


def served_by(answer_text: str) -> str:
    """The NAME of the worker that wrote an answer."""
    return answer_text[1:answer_text.index("]")]
