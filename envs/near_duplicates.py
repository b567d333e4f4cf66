"""Near-duplicate tasks across splits: two tasks are near-duplicates when the Jaccard similarity of their texts'
word sets (lower-cased runs of letters and digits) is at least NEAR = 0.7.

A paraphrase of a held-out task in the training data lets a model score by recall; exact-match checks miss it
(AgentBench's OS training family has 20 of its 60 dev tasks paraphrased in train at ≥ 0.7). Splits that must be
apart keep the held-out side whole and drop the training side's near-duplicates.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

NEAR = 0.7
_WORD = re.compile(r"[a-z0-9]+")
T = TypeVar("T")


def words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    shared = len(a & b)
    union = len(a) + len(b) - shared  # counted, not built: the generator's train drafts make millions of these
    return shared / union if union else 1.0


class WordSetIndex:
    """The word sets of the held-out tasks; `near(text)` says whether a text is a near-duplicate of any of them.
    An inverted index by word keeps it fast: only held-out tasks sharing a word are compared."""

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self._sets: list[frozenset[str]] = []
        self._by_word: dict[str, list[int]] = {}
        for text in texts:
            self.add(text)

    def add(self, text: str) -> None:
        ws = words(text)
        for word in ws:
            self._by_word.setdefault(word, []).append(len(self._sets))
        self._sets.append(ws)

    def closest(self, text: str) -> float:
        """The highest similarity of `text` to a held-out task (0 when none shares a word)."""
        ws = words(text)
        candidates = {i for word in ws for i in self._by_word.get(word, ())}
        return max((jaccard(ws, self._sets[i]) for i in candidates), default=0.0)

    def near(self, text: str) -> bool:
        return self.closest(text) >= NEAR


def drop_near(items: Sequence[T], held_out: Iterable[str], text: Callable[[T], str]) -> list[T]:
    """`items` without those that are near-duplicates of a held-out text, in their order."""
    index = WordSetIndex(held_out)
    return [item for item in items if not index.near(text(item))]
