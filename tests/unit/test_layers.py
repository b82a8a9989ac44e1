"""The layering of the source, read from its import statements (with `ast`, nothing is imported):

    common                 <- the shared base, imports no other project package
    svc_mgr, generators    <- on common only
    worker                 <- common, svc_mgr, generators
    wrapper                <- common, svc_mgr (never a generator, never the worker)
    entry scripts          <- worker or wrapper only

Every import counts: top-level or inside a function, absolute or relative. The project's packages and
modules are found in the repository, so a new package is held to the rules as soon as it is imported."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.procs import ROOT

ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "svc_mgr": {"common"},
    "generators": {"common"},
    "worker": {"common", "svc_mgr", "generators"},
    "wrapper": {"common", "svc_mgr"},
}
ENTRY_SCRIPTS: dict[str, set[str]] = {
    "main_openai_wrapper_v2.py": {"wrapper"},
    "openai_worker.py": {"worker"},
    "template_worker.py": {"worker"},
}
ENTRY_MAY_IMPORT = {"worker", "wrapper"}


def project_names(root: Path) -> set[str]:
    """Top-level names that are this repository's: packages (a folder with __init__.py) and modules."""
    return {p.parent.name for p in root.glob("*/__init__.py")} | {p.stem for p in root.glob("*.py")}


def imports(path: Path, root: Path) -> list[tuple[int, str, str]]:
    """(line, top-level name, the statement) for every import in `path`, relative ones resolved against the
    file's own package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = list(path.relative_to(root).parent.parts)
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):  # walks function bodies too
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0], f"import {a.name}") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ", ".join(a.name for a in node.names)
            text = f"from {'.' * node.level}{node.module or ''} import {names}"
            if node.level == 0:
                found.append((node.lineno, (node.module or "").split(".")[0], text))
                continue
            if node.level - 1 > len(package):
                raise ValueError(f"{path}:{node.lineno}: {text} goes above the repository")
            base = package[:len(package) - (node.level - 1)]
            if base:
                found.append((node.lineno, base[0], text))
            elif node.module:  # `from .. import x` at the top: the module named is the top-level one
                found.append((node.lineno, node.module.split(".")[0], text))
            else:
                found += [(node.lineno, a.name, text) for a in node.names]
    return found


def violations(files: list[Path], allowed: set[str], own: str | None, root: Path) -> list[str]:
    project = project_names(root)
    out = []
    for path in files:
        for line, name, text in imports(path, root):
            if name in project and name != own and name not in allowed:
                out.append(f"{path.relative_to(root)}:{line}: {text}  ({name} is not allowed here)")
    return out


def package_files(root: Path, package: str) -> list[Path]:
    return sorted(p for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(package):
    files = package_files(ROOT, package)
    assert files, f"no Python files found in {package}/"
    bad = violations(files, ALLOWED[package], package, ROOT)
    assert not bad, f"{package} may import only {sorted(ALLOWED[package]) or 'no other project package'}:\n" + \
        "\n".join(bad)


@pytest.mark.parametrize("script", sorted(ENTRY_SCRIPTS))
def test_entry_scripts_import_only_the_worker_or_the_wrapper(script):
    path = ROOT / script
    bad = violations([path], ENTRY_MAY_IMPORT, None, ROOT)
    assert not bad, f"{script} may import only worker or wrapper:\n" + "\n".join(bad)
    used = {name for _, name, _ in imports(path, ROOT)} & project_names(ROOT)
    assert used == ENTRY_SCRIPTS[script], f"{script} imports {sorted(used)}"


def test_worker_and_wrapper_never_import_each_other():
    for a, b in (("worker", "wrapper"), ("wrapper", "worker")):
        bad = [f"{path.relative_to(ROOT)}:{line}: {text}" for path in package_files(ROOT, a)
               for line, name, text in imports(path, ROOT) if name == b]
        assert not bad, f"{a} imports {b}:\n" + "\n".join(bad)


def test_the_rules_cover_every_source_package():
    """A new top-level package must be placed in the layers (tests and bench sit on top and are not checked)."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == set(ALLOWED), f"add {sorted(packages - set(ALLOWED))} to ALLOWED" if packages - set(ALLOWED) \
        else f"{sorted(set(ALLOWED) - packages)} no longer exist"


# ---- the checker itself --------------------------------------------------------------------------

def test_the_checker_sees_every_kind_of_import(tmp_path):
    for package in ("common", "worker", "wrapper"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "common" / "sub").mkdir()
    (tmp_path / "common" / "sub" / "__init__.py").write_text("")
    (tmp_path / "common" / "sub" / "deep.py").write_text(
        "import os\n"
        "from . import sibling\n"              # common
        "from .. import settings\n"            # common
        "def later():\n"
        "    import wrapper.hop\n"             # inside a function
        "    from worker import app\n"
        "    return app\n")
    (tmp_path / "script.py").write_text("from . import worker\n")
    found = imports(tmp_path / "common" / "sub" / "deep.py", tmp_path)
    assert [(line, name) for line, name, _ in found] == [(1, "os"), (2, "common"), (3, "common"), (5, "wrapper"),
                                                         (6, "worker")]
    bad = violations([tmp_path / "common" / "sub" / "deep.py"], set(), "common", tmp_path)
    assert bad == ["common/sub/deep.py:5: import wrapper.hop  (wrapper is not allowed here)",
                   "common/sub/deep.py:6: from worker import app  (worker is not allowed here)"]
    assert [name for _, name, _ in imports(tmp_path / "script.py", tmp_path)] == ["worker"]
