"""The layers of docs/ARCHITECTURE.md hold: no module imports one of a higher layer.

core < training < worlds/evals < harness < commands. Every import counts, also those inside functions;
imports under `if TYPE_CHECKING:` are for annotations only and are left out. A module of senseflow/ or
evals/ that no entry below names fails the test: a new module gets its layer here and in the document.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# docs/ARCHITECTURE.md, "The layers": an entry names a module or a package (all modules under it; the
# top-level "senseflow" only its own __init__, so that a new senseflow module is never placed by default)
LAYERS: dict[str, tuple[str, ...]] = {
    "core": ("senseflow", "senseflow.flow", "senseflow.losses", "senseflow.generator", "senseflow.distill",
             "senseflow.discriminators", "senseflow.models", "senseflow.backbones", "senseflow.precision",
             "senseflow.cuda_kernels", "senseflow.parallel", "senseflow.config", "senseflow.tiny_mode",
             "senseflow.metric_names", "senseflow.errors"),
    "training": ("senseflow.train", "senseflow.checkpoint", "senseflow.run_folder", "senseflow.world",
                 "senseflow.data", "senseflow.progress", "senseflow.allocator"),
    "worlds/evals": ("senseflow.worlds", "senseflow.components", "senseflow.evaluate", "evals"),
    "harness": ("senseflow.launch", "senseflow.grid", "senseflow.sweep", "senseflow.run", "senseflow.preflight",
                "senseflow.planner", "senseflow.depth_extension", "senseflow.export", "senseflow.bench"),
    "commands": ("senseflow.commands", "senseflow.cli", "senseflow.__main__"),
}
ORDER = list(LAYERS)


def _modules() -> dict[str, Path]:
    out = {}
    for root in ("senseflow", "evals"):
        for f in (REPO / root).rglob("*.py"):
            mod = ".".join(f.relative_to(REPO).with_suffix("").parts)
            out[mod.removesuffix(".__init__")] = f
    return out


def layer_of(module: str) -> str | None:
    """The layer of the longest entry that is the module or a package above it."""
    best, layer = -1, None
    for name, entries in LAYERS.items():
        for e in entries:
            if (module == e or (e != "senseflow" and module.startswith(e + "."))) and len(e) > best:
                best, layer = len(e), name
    return layer


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (or `if typing.TYPE_CHECKING:`)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return skip


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `module` imports (relative imports resolved, `from pkg import mod` as pkg.mod)."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_only(tree)
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != module:
                out.add(t)
    return out


def test_every_module_has_a_layer():
    missing = sorted(m for m in _modules() if layer_of(m) is None)
    assert not missing, f"modules without a layer (add them to LAYERS and docs/ARCHITECTURE.md): {missing}"


def test_no_module_imports_a_higher_layer():
    known = _modules()
    up = []
    for mod, path in sorted(known.items()):
        here = ORDER.index(layer_of(mod))
        for target in sorted(imports(mod, path, known)):
            there = ORDER.index(layer_of(target))
            if there > here:
                up.append(f"{mod} ({ORDER[here]}) imports {target} ({ORDER[there]})")
    assert not up, "imports that run up a layer:\n" + "\n".join(up)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    pkg = {"senseflow.flow": tmp_path / "flow.py", "senseflow.cli": tmp_path / "cli.py"}
    pkg["senseflow.flow"].write_text("def f():\n    from senseflow import cli\n"
                                     "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import senseflow.cli\n")
    assert imports("senseflow.flow", pkg["senseflow.flow"], pkg) == {"senseflow.cli"}
    pkg["senseflow.flow"].write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import senseflow.cli\n")
    assert imports("senseflow.flow", pkg["senseflow.flow"], pkg) == set()


def test_the_document_names_every_entry():
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    missing = [e for entries in LAYERS.values() for e in entries if f"`{e}`" not in doc]
    assert not missing, f"docs/ARCHITECTURE.md does not name {missing}"


def test_the_cores_weight_keys_are_the_metric_models_config_keys():
    """senseflow.metric_names.WEIGHT_KEYS (checked by the config) against evals.weights.WEIGHTS (resolved by
    the metrics): the same keys, so moving the list below the config changed nothing."""
    from evals.weights import WEIGHTS
    from senseflow.metric_names import WEIGHT_KEYS

    assert WEIGHT_KEYS == tuple(sorted({spec.config_key.rsplit(".", 1)[-1] for spec in WEIGHTS.values()}))
    assert all(spec.config_key.startswith("eval.weights.") for spec in WEIGHTS.values())
