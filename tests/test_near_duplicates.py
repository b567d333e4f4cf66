"""Near-duplicates across splits: word-set Jaccard, computed by hand on small texts, and the index that checks a
text against every held-out task."""

from __future__ import annotations

import pytest

from cycleqd.envs.near_duplicates import NEAR, WordSetIndex, drop_near, jaccard, words


def test_word_sets_ignore_case_and_punctuation_and_jaccard_is_shared_over_union() -> None:
    assert words("How many FILES are in /etc?") == {"how", "many", "files", "are", "in", "etc"}
    a, b = words("count the files in /etc"), words("count the files in /usr")
    assert jaccard(a, b) == pytest.approx(4 / 6)
    assert jaccard(words(""), words("")) == 1.0


def test_the_index_finds_the_closest_held_out_task_and_drops_at_the_threshold() -> None:
    held = ["count the files in the etc folder", "print the current user name"]
    index = WordSetIndex(held)
    assert index.closest("count all the files in the etc folder") == pytest.approx(6 / 7)
    assert index.closest("reboot now") == 0.0
    seven = "a b c d e f g"  # 7 of 10 words shared: exactly the threshold, which counts as a near-duplicate
    assert WordSetIndex([seven + " h i j"]).closest(seven) == pytest.approx(NEAR)
    assert WordSetIndex([seven + " h i j"]).near(seven)
    assert not WordSetIndex([seven + " h i j k"]).near(seven)
    train = ["count all the files in the etc folder", "list the open ports", "print the current user name!"]
    assert drop_near(train, held, str) == ["list the open ports"]


def test_a_db_split_the_held_out_ones_crowd_out_is_refused_in_one_line() -> None:
    import asyncio

    from cycleqd.envs.db.generate import generate_split
    from cycleqd.envs.errors import TaskFormatError

    class Everything(WordSetIndex):
        def near(self, text: str) -> bool:
            return True

    # no draft gets past the held-out check, so MariaDB is never asked (no server needed)
    with pytest.raises(TaskFormatError, match=r"a split of 3 generated DB tasks: field '\(count\)': expected fewer"):
        asyncio.run(generate_split(3, 0, None, set(), held_out=Everything()))  # type: ignore[arg-type]
