"""One import name per module: the top-level folders (envs/, db/, …) are `cycleqd.<name>` through the links in
cycleqd/, and only that. From the checkout's root a bare `import db` also works, and would load db/store.py a
second time as another module: two `Store` classes, two registries of environments, an `except` that misses the
other copy's errors. Read with `ast`, so a word in a string or a comment is not an import."""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The folders that cycleqd/ links to: a new one is covered the moment its link is made.
LINKED = sorted(p.name for p in (ROOT / "cycleqd").iterdir() if p.is_symlink() and p.resolve().parent == ROOT)
SCANNED = ["cycleqd", *LINKED, "tests", "bench", "scripts", "tui.py"]


def python_files() -> Iterator[Path]:
    for name in SCANNED:
        place = ROOT / name
        if place.is_file():
            yield place
            continue
        for path in sorted(place.rglob("*.py")):
            # The links' targets are scanned under their own names, once.
            if not any(parent.is_symlink() for parent in path.relative_to(ROOT).parents if parent != Path(".")):
                yield path


def bare_imports(source: str) -> Iterator[tuple[int, str]]:
    """(line, statement) for each import that names a linked folder at the top level, in the code and in the code
    its strings hold (a `python -c` child imports as the checkout's root lets it)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value:
            yield from ((node.lineno, statement) for _, statement in bare_imports(code_or_nothing(node.value)))
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name.partition(".")[0] in LINKED for name in names):
            yield node.lineno, ast.unparse(node)


def code_or_nothing(text: str) -> str:
    """`text`, dedented, if it parses as Python; else nothing: prose is not code."""
    try:
        ast.parse(textwrap.dedent(text))
    except SyntaxError:
        return ""
    return textwrap.dedent(text)


def test_the_linked_folders_are_found() -> None:
    assert {"db", "envs", "evolver", "sandboxes", "serving"} <= set(LINKED)


def test_no_module_imports_a_linked_folder_by_its_bare_name() -> None:
    files = [path for path in python_files() if path != Path(__file__).resolve()]  # this one holds samples
    assert len(files) > 100  # the scan reached the code, not an empty folder
    found = [f"{path.relative_to(ROOT)}:{line}: {statement}"
             for path in files for line, statement in bare_imports(path.read_text())]  # fmt: skip
    assert not found, "import these as cycleqd.<name>:\n" + "\n".join(found)


def test_the_check_sees_each_form_of_a_bare_import() -> None:
    source = (
        "import db\nimport envs.registry as r\nfrom serving.model_ref import X\nfrom evolver import y\n"
        "from cycleqd.db import store\nfrom . import sandboxes\nimport dbx\ntext = 'to import db, type it'\n"
        "def f():\n    import sandboxes.images\n"
        "child = [sys.executable, '-c', 'import sys; from evolver.genome import Genome']\n"
    )
    assert sorted(bare_imports(source)) == [
        (1, "import db"), (2, "import envs.registry as r"), (3, "from serving.model_ref import X"),
        (4, "from evolver import y"), (10, "import sandboxes.images"), (11, "from evolver.genome import Genome"),
    ]  # fmt: skip
