"""The package's layout holds: no import cycle between its modules or between its subpackages (every import counted:
module-level, function-level, type-only), the walker knows no stage, the recipe knows no run option, and the
torch-free parts stay torch-free."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "optimum_si")


def _modules() -> dict[str, str]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    found = {}
    for folder, _dirs, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """The package's modules that module `name` imports, anywhere in its source."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
            names: list[str] = []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                bases = [".".join(base + ([node.module] if node.module else []))]
            else:
                bases = [node.module or ""]
            names = [alias.name for alias in node.names]
        else:
            continue
        for base in bases:
            if not base.startswith("optimum_si"):
                continue
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            targets.update(submodules or ([base] if base in modules else []))
            if names and len(submodules) < len(names) and base in modules:
                targets.add(base)  # names that are attributes of the module itself
    targets.discard(name)
    return targets


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` if there is one (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_no_import_cycle_between_modules():
    graph = _graph()
    assert len(graph) > 50 and "optimum_si.pipeline.walker" in graph["optimum_si.runs.setup"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_no_import_cycle_between_subpackages():
    packages: dict[str, set[str]] = {}
    for module, imports in _graph().items():
        packages.setdefault(_subpackage(module), set()).update(
            _subpackage(target) for target in imports if _subpackage(target) != _subpackage(module))
    assert _cycle(packages) is None, " -> ".join(_cycle(packages) or [])


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_walker_knows_no_stage():
    """No module of the walk mentions a stage that ships (they plug in through the stage protocol)."""
    for folder, _dirs, files in os.walk(os.path.join(PACKAGE, "pipeline")):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(folder, name), encoding="utf-8").read().lower()
                for word in ("induction", "owl", "reconstruct"):
                    assert word not in text, f"pipeline/{name} mentions {word}"


def test_no_run_option_in_the_recipe_and_every_knob_with_its_owner():
    from optimum_si import RunOptions, SIConfig
    from optimum_si.methods import available_methods, get_method

    recipe = {f.name for f in dataclasses.fields(SIConfig)}
    assert not recipe & set(RunOptions.field_names())
    assert not [name for name in recipe if "_" in name and name.split("_")[0] in (*available_methods(), "owl",
                                                                                    "induction", "alps")]
    for method in available_methods():
        assert not recipe & set(get_method(method).config_class.field_names())


@pytest.mark.parametrize("module", ["optimum_si", "optimum_si.recipe", "optimum_si.methods", "optimum_si.cli.flags",
                                    "optimum_si.induction.config", "optimum_si.planning.config",
                                    "optimum_si.checkpoint.files", "optimum_si.data.named_sets"])
def test_torch_free_modules_stay_torch_free(module):
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0, module
