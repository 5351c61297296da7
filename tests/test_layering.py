"""The package's architecture, read from its import graph (ast over cyb_jax/, nothing imported).

Layers, each importing only itself and those below it:

  0  losses, data, files, console, sharding, metrics_writer (the foundations; `losses` and
     `data` import nothing of the project)
  1  configs
  2  model
  3  pretrained
  4  analysis
  5  training
  6  experiment
  7  cli

A test fails on an upward import or an import cycle between modules, naming the modules.
"""

import ast
import os

import pytest

_PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cyb_jax")
LAYERS = {
  "losses": 0,
  "data": 0,
  "files": 0,
  "console": 0,
  "sharding": 0,
  "metrics_writer": 0,
  "configs": 1,
  "model": 2,
  "pretrained": 3,
  "analysis": 4,
  "training": 5,
  "experiment": 6,
  "cli": 7,
}
# Foundations that import no other part of the project at all.
SELF_CONTAINED = ("losses", "data")


def _modules() -> dict[str, str]:
  """Dotted module name -> file, for every module of cyb_jax (packages by their __init__)."""
  modules = {}
  for folder, _, names in os.walk(_PACKAGE):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, os.path.dirname(_PACKAGE))[:-3].replace(os.sep, ".")
        modules[dotted.removesuffix(".__init__")] = path
  return modules


def _imports(path: str, modules: dict[str, str], module: str) -> set[str]:
  """The cyb_jax modules that `module` imports (a `from X import y` counts X.y when it is a
  module, else X)."""
  found = set()
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("cyb_jax")}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
      if not base.startswith("cyb_jax"):
        continue
      for alias in node.names:
        found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
  return {m for m in found if m in modules and m != module}


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {m: _imports(p, modules, m) for m, p in modules.items()}


def _part(module: str) -> str:
  """The top-level part of cyb_jax a module belongs to ('' for cyb_jax itself)."""
  return module.split(".")[1] if "." in module else ""


def test_every_part_of_the_package_has_a_layer():
  parts = {_part(m) for m in _modules()} - {""}
  assert parts == set(LAYERS), f"parts without a layer: {sorted(parts - set(LAYERS))}"


def test_no_module_imports_a_higher_layer():
  upward = [
    f"{m} (layer {LAYERS[_part(m)]}) imports {d} (layer {LAYERS[_part(d)]})"
    for m, deps in _graph().items()
    for d in deps
    if _part(m) and _part(d) and LAYERS[_part(d)] > LAYERS[_part(m)]
  ]
  assert not upward, "\n".join(upward)


@pytest.mark.parametrize("part", SELF_CONTAINED)
def test_self_contained_foundations_import_nothing_of_the_project(part):
  outside = [f"{m} imports {d}" for m, deps in _graph().items() if _part(m) == part for d in deps if _part(d) != part]
  assert not outside, "\n".join(outside)


def test_the_import_graph_has_no_cycle():
  graph = _graph()
  state: dict[str, int] = {}  # 1: on the current path, 2: done

  def visit(module: str, path: list[str]) -> None:
    state[module] = 1
    for dep in sorted(graph[module]):
      if state.get(dep) == 1:
        cycle = path[path.index(dep) :] + [module, dep] if dep in path else [module, dep]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if dep not in state:
        visit(dep, path + [module])
    state[module] = 2

  for module in sorted(graph):
    if module not in state:
      visit(module, [])


def test_the_layer_check_sees_an_upward_import(tmp_path):
  """The graph reader finds `from cyb_jax.training import x` in a model module (so the
  layering test can fail)."""
  path = tmp_path / "bad.py"
  path.write_text("from cyb_jax.training import train\nfrom cyb_jax import losses\n")
  deps = _imports(str(path), _modules(), "cyb_jax.model.bad")
  assert deps == {"cyb_jax.training.train", "cyb_jax.losses"}
  assert LAYERS[_part("cyb_jax.training.train")] > LAYERS[_part("cyb_jax.model.bad")]
