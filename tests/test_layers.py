"""The folders are layers: no module imports a layer above its own, no import cycle, a plain encoder.

Read from the source text (``ast``), so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "src" / "sasrec_lightning"
#: Lowest first; a module may import its own layer and those below it.
LAYERS = ["root", "data", "model", "fast", "serving", "training", "cli"]
ROOT_MODULES = {"errors", "validation", "atomic"}


def _modules() -> dict[str, Path]:
    return {".".join(path.relative_to(PACKAGE).with_suffix("").parts): path for path in PACKAGE.rglob("*.py")}


def _layer(module: str) -> str:
    first = module.split(".")[0]
    return "root" if first in ROOT_MODULES else first


def _imports(module: str, path: Path) -> set[str]:
    """The package modules ``module`` imports (``a.b`` names, without the ``sasrec_lightning`` prefix)."""
    package = module.split(".")[:-1] if not module.endswith("__init__") else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith("sasrec_lightning"):
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # `from . import x` imports the module x
                candidate = ".".join([*target, alias.name])
                found.add(candidate if candidate in _modules() else ".".join(target))
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".", 1)[1] for alias in node.names
                      if alias.name.startswith("sasrec_lightning.")}
    return {name for name in found if name and not name.endswith("__init__")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        if module == "__init__" or module.endswith(".__init__") or module.endswith("__main__"):
            continue
        targets = set()
        for name in _imports(module, path):
            # a folder imported as a package (`from ..model import x`): its module x, or the folder's __init__
            targets.add(name if name in modules else name.rsplit(".", 1)[0] if name.rsplit(".", 1)[0] in modules
                        else name)
        graph[module] = {target for target in targets if target in modules and target != module}
    return graph


def test_every_module_is_in_a_known_layer():
    assert {_layer(module) for module in _graph()} <= set(LAYERS)


def test_no_module_imports_a_layer_above_its_own():
    upward = [(module, target) for module, targets in _graph().items() for target in targets
              if LAYERS.index(_layer(target)) > LAYERS.index(_layer(module))]
    assert not upward, upward


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                pytest.fail(f"import cycle: {' -> '.join([*path[path.index(target):], target])}")
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_encoder_imports_only_torch_and_its_own_layer():
    imported = _imports("model.encoder", PACKAGE / "model" / "encoder.py")
    assert imported and all(name.startswith("model.") for name in imported), imported
    tree = ast.parse((PACKAGE / "model" / "encoder.py").read_text())
    outside = {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and not node.level} | {alias.name.split(".")[0] for node in ast.walk(tree)
                                      if isinstance(node, ast.Import) for alias in node.names}
    assert outside <= {"__future__", "math", "torch", "typing"}, outside


def test_the_data_module_never_reads_the_trainers_module_and_no_loss_is_tested_by_name():
    source = "\n".join(path.read_text() for path in PACKAGE.rglob("*.py"))
    assert "lightning_module" not in (PACKAGE / "data" / "datamodule.py").read_text()
    assert "loss ==" not in source and "loss_name ==" not in source
    for banned in ("inspect.signature(SASRec", "**self.hparams", "build_loss("):
        assert banned not in source, banned


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The graph is not empty and an upward import is found: a model module importing training."""
    graph = _graph()
    assert graph["training.module"] >= {"model.encoder", "model.losses", "fast.speed"}
    monkeypatch.setitem(graph, "model.losses", graph["model.losses"] | {"training.module"})
    upward = [(m, t) for m, ts in graph.items() for t in ts if LAYERS.index(_layer(t)) > LAYERS.index(_layer(m))]
    assert upward == [("model.losses", "training.module")]
