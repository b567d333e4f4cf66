"""cycleqd's modules import one another without cycles, counting every import: at the top, inside a function, and
under TYPE_CHECKING (a cycle a type checker or an editor must untangle is still a cycle a reader must)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cycleqd"


def module_files() -> dict[str, Path]:
    """Every module of the package by dotted name, the linked top-level folders (cycleqd/envs → ../envs) included."""
    found = {}
    for folder, _, files in os.walk(PACKAGE, followlinks=True):
        for file in files:
            if file.endswith(".py"):
                parts = (Path(folder) / file).relative_to(PACKAGE.parent).with_suffix("").parts
                found[".".join(parts).removesuffix(".__init__")] = Path(folder) / file
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            graph[name].update(n for n in names if n in modules and n != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif target not in index:
                index[target] = low[target] = len(index)
                stack.append(target)
                on_stack.add(target)
                work.append((target, iter(sorted(graph[target]))))
            elif target in on_stack:
                low[node] = min(low[node], index[target])
    return found


def test_the_cycle_finder_finds_a_cycle_through_three_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_cycleqd_imports_itself_round_a_cycle() -> None:
    modules = module_files()
    assert {"cycleqd.cli", "cycleqd.envs.registry", "cycleqd.evolver.genome", "cycleqd.monitor.app"} <= modules.keys()
    assert cycles(import_graph(modules)) == []


def test_the_evolvers_algorithm_and_materialisation_import_without_docker() -> None:
    """A GPU machine has torch and no Docker SDK (bench/gpu_check.py runs there): the evolver's math must import."""
    probe = ("import sys; sys.modules['docker'] = None; import cycleqd.evolver.algorithm, cycleqd.evolver.materialize, "
             "cycleqd.evolver.svd_cache, cycleqd.evolver.genome")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1500:]
