"""The lineage of the selected elite: its parents with their crossover weights ω, their parents in turn, and the
mutation that made each child, back to the experts and the base."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from cycleqd.monitor.queries.evolution_run import CandidateView

MAX_DEPTH = 12


def scores_text(scores: dict[str, Any]) -> str:
    return " ".join(f"{task[:6]} {value:.2f}" for task, value in scores.items() if isinstance(value, int | float))


def mutation_text(mutation: dict[str, Any]) -> str:
    """A child's mutation ("mutation svd (seed 7, task os)"); what an expert or a merge records instead of one
    (e.g. {"expert": "os"}) as it is."""
    rest = ", ".join(f"{key} {value}" for key, value in mutation.items() if key != "kind")
    if "kind" not in mutation:
        return rest
    return f"mutation {mutation['kind']}" + (f" ({rest})" if rest else "")


def candidate_label(c: CandidateView) -> Text:
    label = Text.assemble((f"#{c.id}", "bold"), f" {c.kind} g{c.generation}")
    if c.scores:
        label.append(f" · {scores_text(c.scores)}", style="cyan")
    if c.episodes is not None:  # selection episodes played of those planned (racing, genome reuse)
        label.append(f" · {c.episodes[0]}/{c.episodes[1]} ep", style="dim")
    return label


class LineageTree(Tree[int]):
    DEFAULT_CSS = Path(__file__).with_name("lineage.tcss").read_text()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("select an elite on a heatmap", **kwargs)
        self.show_root = True
        self.guide_depth = 2
        self._shown: tuple[Any, ...] | None = None

    def show(self, title: str, elite_id: int | None, candidates: dict[int, CandidateView]) -> None:
        """The tree of `elite_id` from `candidates` (the elite and its ancestors, as `lineage()` returns them)."""
        signature = (title, elite_id, tuple(sorted((i, repr(c)) for i, c in candidates.items())))
        if signature == self._shown:
            return
        self._shown = signature
        self.clear()
        elite = candidates.get(elite_id) if elite_id is not None else None
        if elite is None:
            self.root.set_label(title or "select an elite on a heatmap")
            return
        self.root.set_label(Text.assemble(f"{title} ", candidate_label(elite)))
        self.root.data = elite.id
        self._grow(self.root, elite, candidates, depth=0, path={elite.id})
        self.root.expand_all()

    def _grow(
        self, node: TreeNode[int], child: CandidateView, found: dict[int, CandidateView], depth: int, path: set[int]
    ) -> None:
        # Ancestors' non-mutations ({"expert": "os"}) would only repeat their label and cost a line each.
        if child.mutation and ("kind" in child.mutation or depth == 0):
            node.add_leaf(Text(mutation_text(child.mutation), style="magenta"))
        for index, parent_id in enumerate(child.parents):
            omega = f"ω {child.omegas[index]:.3f} ← " if index < len(child.omegas) else "← "
            parent = found.get(parent_id)
            if parent is None or depth >= MAX_DEPTH or parent_id in path:
                node.add_leaf(Text.assemble(omega, (f"#{parent_id}", "bold"), " …"), data=parent_id)
                continue
            branch = node.add(Text.assemble(omega, candidate_label(parent)), data=parent_id)
            if parent.parents or "kind" in parent.mutation:
                self._grow(branch, parent, found, depth + 1, path | {parent_id})
            else:
                branch.allow_expand = False
