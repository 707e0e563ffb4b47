"""The engine's import graph: optional imports in one leaf, no cycles, nothing imported inside functions, and
each layer importing only its own or lower layers (see plugins/module_utils/_virt/__init__.py)."""

import ast
import os

import pytest

PREFIX = "ansible_collections.lockstep.virt.plugins.module_utils._virt"
ROOT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))),
    "plugins",
    "module_utils",
    "_virt",
)
NOT_YET = set()  # modules allowed a function-level import (none)


def _modules():
    out = {}
    for folder, _dirs, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[name] = ast.parse(open(path).read())
    return out


def _engine_imports(tree, top_level_only):
    nodes = tree.body if top_level_only else ast.walk(tree)
    deps = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PREFIX):
            rest = node.module[len(PREFIX) + 1 :]
            deps.update([rest] if rest else [a.name for a in node.names])
    return deps


MODULES = _modules()


def test_optional_imports_live_in_one_leaf():
    assert _engine_imports(MODULES["_imports"], top_level_only=False) == set()
    assert _engine_imports(MODULES["errors"], top_level_only=False) == {"_imports"}
    for name, tree in MODULES.items():
        if name == "_imports":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] not in ("libvirt", "lxml") for a in node.names), name
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in ("libvirt", "lxml"), name


@pytest.mark.parametrize("name", sorted(set(MODULES) - NOT_YET))
def test_no_engine_import_inside_a_function(name):
    assert _engine_imports(MODULES[name], top_level_only=False) == _engine_imports(MODULES[name], top_level_only=True)


def test_no_import_cycle():
    graph = {name: _engine_imports(tree, top_level_only=False) for name, tree in MODULES.items()}
    state = {}

    def visit(name, path):
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", "import cycle: " + " -> ".join(path + [name])
        state[name] = "open"
        for dep in graph.get(name, ()):
            visit(dep, path + [name])
        state[name] = "done"

    for name in graph:
        visit(name, [])


# plugins/module_utils/_virt/__init__.py: the layers, top first
LAYERS = ("entry", "managers", "migration", "reporters", "spec", "parts")


def layer_of(name):
    if name == "runner":
        return "entry"
    top = name.split(".")[0]
    return top if top in LAYERS else "parts"


def test_each_layer_imports_only_its_own_or_lower_layers():
    wrong = []
    for name, tree in MODULES.items():
        if name == "__init__":
            continue
        mine = LAYERS.index(layer_of(name))
        for dep in _engine_imports(tree, top_level_only=False):
            if LAYERS.index(layer_of(dep)) < mine:
                wrong.append("{} ({}) imports {} ({})".format(name, layer_of(name), dep, layer_of(dep)))
    assert not wrong, wrong
