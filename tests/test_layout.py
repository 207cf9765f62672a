"""The package layout says which modules are stages and which are library code.

A stage is a module the workflow runs (`-m pipeline.X` or `launcher(...) + " pipeline.X"` in a
rule) and has a `main()`; everything else is library code, which must not import a stage (a
reward-model class importing the MC-labelling stage is how this went wrong before). Checked from
the source with `ast`, so the test fails the moment a library module grows such an import.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pipeline"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def workflow_stages() -> set[str]:
    """Modules the rules run: `-m pipeline.x` or `launcher(...) + " pipeline.x ..."`."""
    text = "\n".join(p.read_text() for p in [ROOT / "Snakefile", *(ROOT / "workflow").rglob("*.smk")])
    return set(re.findall(r"-m (pipeline(?:\.\w+)+)", text)) | set(re.findall(r"\" (pipeline(?:\.\w+)+) ", text))


def entry_module(name: str, mods: dict[str, Path]) -> str:
    """The module whose main() `python -m name` runs: the module, or for a package the module its
    __main__ imports main from."""
    if f"{name}.__main__" not in mods:
        return name
    tree = ast.parse(mods[f"{name}.__main__"].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any(a.name == "main" for a in node.names):
            return resolve(f"{name}.__main__", node, mods, is_package=False)
    raise AssertionError(f"{name}/__main__.py does not import a main()")


def resolve(importer: str, node: ast.ImportFrom, mods: dict[str, Path], is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(name: str, mods: dict[str, Path]) -> set[str]:
    """Every pipeline module `name` imports (at any depth of its code, lazy imports included)."""
    path = mods[name]
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            target = resolve(name, node, mods, is_package=path.name == "__init__.py")
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names}  # `from . import x` imports module x
    return {m for m in out if m in mods}


def has_main(path: Path) -> bool:
    return any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in ast.parse(path.read_text()).body)


def test_every_workflow_stage_has_a_main_and_only_stages_do():
    mods = modules()
    run = workflow_stages()
    assert {"pipeline.rl", "pipeline.sft", "pipeline.train_rm", "pipeline.table2"} <= run, run
    entries = {entry_module(m, mods) for m in run}
    for m in entries:
        assert m in mods and has_main(mods[m]), f"{m}: run by the workflow but has no main()"
    with_main = {m for m, p in mods.items() if has_main(p)}
    assert with_main == entries, f"main() outside the workflow's stages: {sorted(with_main - entries)}"


def test_library_modules_do_not_import_stages():
    mods = modules()
    stages = {entry_module(m, mods) for m in workflow_stages()}
    bad = {m: sorted(imported_modules(m, mods) & stages) for m in mods if m not in stages and not m.endswith("__main__")}
    bad = {m: s for m, s in bad.items() if s}
    assert not bad, f"library modules importing a stage: {bad}"


def test_the_checker_sees_a_library_import_of_a_stage(tmp_path):
    """The checker itself: a relative import of the MC-labelling stage from inside a subpackage
    resolves to `pipeline.mc_label` (the old `reward_models -> mc_label` import, one level down)."""
    mods = modules()
    node = ast.parse("from ..mc_label import step_labels").body[0]
    assert resolve("pipeline.rewards.head", node, mods, is_package=False) == "pipeline.mc_label"
    assert "pipeline.mc_label" in {entry_module(m, mods) for m in workflow_stages()}
