"""`cycleqd suite generate db`: DBBench-format tasks generated over random tables, their answers computed on the
real MariaDB.

A table is drawn from one of several themes (its name, a key column of unique names, categorical and numeric
columns, a random subset of them, 6–14 rows of random values). A task is drawn from one of the families DBBench
has: a lookup, counting, an aggregate (SUM, AVG, MAX, MIN), a ranking, a comparison, an INSERT, an UPDATE, a
DELETE. The task carries its gold SQL (`sql.query` for a SELECT, the label for a modification, as DBBench does)
and the generator runs that SQL through a real DBBench episode on MariaDB: a SELECT's label is the values that
came back, a modification's `answer_md5` the table's hash afterwards. Nothing is computed in Python that the
scorer could disagree with. Tasks whose answer would be ambiguous (ties, empty results, too many values) are
drawn again.

Splits are disjoint: every task's (table, description) appears in one split only, and no task is a
near-duplicate (envs/near_duplicates.py: word-set Jaccard ≥ 0.7 of its description and table header line) of a
task of a split drawn before it (test, then dev, then train). The splits still share the generator's themes and
sentence templates: its test split is an in-family test, not a transfer one (DBBench's own tasks are that).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cycleqd.envs.db.episode import DBBenchEpisode
from cycleqd.envs.db.mariadb import MariaDBServer
from cycleqd.envs.db.tasks import MODIFYING, parse_db_task
from cycleqd.envs.errors import EpisodeSetupError, TaskFormatError
from cycleqd.envs.near_duplicates import WordSetIndex
from cycleqd.envs.registry import SandboxStarter

GENERATOR_VERSION = 2  # bumped when tasks change, so that cached suites are regenerated
MAX_VALUES = 6  # a SELECT whose answer has more values is drawn again
MAX_NEAR_DRAWS_PER_TASK = 200  # drafts near a held-out task, per task asked for, before the split is refused


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # key (unique words), cat (a few words), num (integers)
    values: tuple[str, ...] = ()  # key/cat: the vocabulary
    low: int = 0
    high: int = 100


@dataclass(frozen=True)
class Theme:
    tables: tuple[str, ...]  # names the table may have
    entity: str  # what a row is, plural
    columns: tuple[Column, ...]  # the first is the key


_PEOPLE = ("Alice", "Bob", "Chen", "Dana", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kim", "Lena", "Mo", "Nia",
           "Omar", "Pia", "Quinn", "Rita", "Sam", "Tara", "Uma", "Vic", "Wen", "Yara", "Zed")  # fmt: skip
_CITIES = ("Berlin", "Paris", "Madrid", "Lisbon", "Oslo", "Rome", "Cairo", "Lima", "Tokyo", "Seoul", "Quito")
THEMES = (
    Theme(("employees", "staff", "Employee List"), "employees", (
        Column("name", "key", _PEOPLE), Column("department", "cat", ("Sales", "Engineering", "Marketing", "Support")),
        Column("city", "cat", _CITIES[:5]), Column("salary", "num", low=3000, high=12000),
        Column("age", "num", low=21, high=64), Column("hired", "num", low=2005, high=2024))),
    Theme(("products", "inventory", "Store Items"), "products", (
        Column("product", "key", ("lamp", "chair", "desk", "kettle", "drill", "ladder", "fan", "mug", "rug", "clock",
                                  "sofa", "bench", "stool", "shelf", "mirror", "vase", "pan", "broom")),
        Column("category", "cat", ("home", "tools", "kitchen", "garden")),
        Column("supplier", "cat", ("Acme", "Bolt", "Dyna", "Orbit")), Column("price", "num", low=5, high=400),
        Column("stock", "num", low=0, high=80))),
    Theme(("students", "Class Roster", "pupils"), "students", (
        Column("student", "key", _PEOPLE), Column("grade", "cat", ("9", "10", "11", "12")),
        Column("club", "cat", ("chess", "drama", "robotics", "choir")), Column("score", "num", low=40, high=100),
        Column("absences", "num", low=0, high=15))),
    Theme(("books", "Library Books", "catalogue"), "books", (
        Column("title", "key", ("Solaris", "Kindred", "Dune", "Emma", "Beloved", "Ubik", "Ulysses", "Matilda",
                                "Rebecca", "Carrie", "Walden", "Candide", "Ivanhoe", "Persuasion", "Neuromancer")),
        Column("genre", "cat", ("Science fiction", "Classic", "Horror", "Essay")),
        Column("author", "cat", ("Lem", "Butler", "Austen", "Dick", "King")),
        Column("year", "num", low=1800, high=2020),
        Column("pages", "num", low=90, high=900), Column("copies", "num", low=0, high=12))),
    Theme(("cities", "City Stats", "towns"), "cities", (
        Column("city", "key", _CITIES + ("Nairobi", "Hanoi", "Dakar", "Perth", "Austin")),
        Column("continent", "cat", ("Europe", "Africa", "Asia", "America")),
        Column("population", "num", low=100, high=9000), Column("area", "num", low=50, high=3000),
        Column("founded", "num", low=800, high=1900))),
    Theme(("matches", "Match Results", "fixtures"), "matches", (
        Column("match", "key", tuple(f"M{n}" for n in range(1, 40))),
        Column("home team", "cat", ("Lions", "Tigers", "Bears", "Wolves")),
        Column("stadium", "cat", ("North Park", "Stripe Arena", "Bay Field")),
        Column("home goals", "num", low=0, high=6), Column("away goals", "num", low=0, high=6),
        Column("attendance", "num", low=500, high=40000))),
)  # fmt: skip


def ident(name: str) -> str:
    """A column or table name as DBBench's SQL writes it: bare when it is a plain word, else in backticks."""
    return name if name.replace("_", "").isalnum() and not name[0].isdigit() else f"`{name}`"


def quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass
class Table:
    name: str
    entity: str
    columns: list[Column]
    rows: list[list[str]]

    def of_kind(self, kind: str) -> list[Column]:
        return [c for c in self.columns if c.kind == kind]

    def column_values(self, column: Column) -> list[str]:
        index = self.columns.index(column)
        return [row[index] for row in self.rows]


def draw_table(rng: random.Random) -> Table:
    theme = rng.choice(THEMES)
    key, *others = theme.columns
    cats = [c for c in others if c.kind == "cat"]
    nums = [c for c in others if c.kind == "num"]
    # at least one categorical and two numeric columns, so that every family has something to ask about
    chosen = set(rng.sample(cats, rng.randint(1, len(cats)))) | set(rng.sample(nums, rng.randint(2, len(nums))))
    columns = [key, *(c for c in others if c in chosen)]
    count = rng.randint(6, min(14, len(key.values)))
    keys = rng.sample(key.values, count)
    rows = [[k, *(rng.choice(c.values) if c.kind == "cat" else str(rng.randint(c.low, c.high)) for c in columns[1:])]
            for k in keys]  # fmt: skip
    return Table(rng.choice(theme.tables), theme.entity, columns, rows)


@dataclass(frozen=True)
class Draft:
    category: str  # DBBench's type: INSERT, UPDATE, DELETE, or a SELECT-like category
    description: str
    sql: str


def _lookup(t: Table, rng: random.Random) -> Draft:
    key = t.columns[0]
    column = rng.choice(t.columns[1:])
    row = rng.choice(t.rows)
    question = rng.choice(("What is the {c} of {k}?", "Which {c} does {k} have?", "Tell me the {c} for {k}."))
    where = f"WHERE {ident(key.name)} = {quote(row[0])}"
    return Draft("other", question.format(c=column.name, k=row[0]) + f" ({key.name} = {row[0]})",
                 f"SELECT {ident(column.name)} FROM {ident(t.name)} {where}")  # fmt: skip


def _counting(t: Table, rng: random.Random) -> Draft:
    if rng.random() < 0.5:
        column = rng.choice(t.of_kind("cat"))
        value = rng.choice(t.column_values(column))
        return Draft("counting", f"How many {t.entity} have {column.name} {value}?",
                     f"SELECT COUNT(*) FROM {ident(t.name)} WHERE {ident(column.name)} = {quote(value)}")  # fmt: skip
    column = rng.choice(t.of_kind("num"))
    threshold = rng.choice(t.column_values(column))
    above = rng.random() < 0.5
    return Draft("counting", f"How many {t.entity} have a {column.name} {'above' if above else 'below'} {threshold}?",
                 f"SELECT COUNT(*) FROM {ident(t.name)} WHERE {ident(column.name)} + 0 {'>' if above else '<'} "
                 f"{threshold}")  # fmt: skip


_AGGREGATES = {"SUM": "total", "AVG": "average", "MAX": "highest", "MIN": "lowest"}


def _aggregate(t: Table, rng: random.Random) -> Draft:
    function = rng.choice(tuple(_AGGREGATES))
    column = rng.choice(t.of_kind("num"))
    value_sql = f"{ident(column.name)} + 0"
    expression = f"ROUND(AVG({value_sql}), 2)" if function == "AVG" else f"{function}({value_sql})"
    words = f"What is the {_AGGREGATES[function]} {column.name}"
    rounding = " Round to two decimals." if function == "AVG" else ""
    if rng.random() < 0.6:
        where = rng.choice(t.of_kind("cat"))
        value = rng.choice(t.column_values(where))
        condition = f"WHERE {ident(where.name)} = {quote(value)}"
        return Draft(f"aggregation-{function}", f"{words} of the {t.entity} with {where.name} {value}?{rounding}",
                     f"SELECT {expression} FROM {ident(t.name)} {condition}")  # fmt: skip
    return Draft(f"aggregation-{function}", f"{words} over all {t.entity}?{rounding}",
                 f"SELECT {expression} FROM {ident(t.name)}")  # fmt: skip


def _ranking(t: Table, rng: random.Random) -> Draft:
    column = rng.choice(t.of_kind("num"))
    highest = rng.random() < 0.5
    key = t.columns[0]
    return Draft("ranking", f"Which of the {t.entity} has the {'highest' if highest else 'lowest'} {column.name}? "
                 f"Give its {key.name}.",
                 f"SELECT {ident(key.name)} FROM {ident(t.name)} ORDER BY {ident(column.name)} + 0 "
                 f"{'DESC' if highest else 'ASC'} LIMIT 1")  # fmt: skip


def _comparison(t: Table, rng: random.Random) -> Draft:
    column = rng.choice(t.of_kind("num"))
    threshold = rng.choice(t.column_values(column))
    above = rng.random() < 0.5
    key = t.columns[0]
    return Draft("comparison", f"List the {key.name} of every one of the {t.entity} whose {column.name} is "
                 f"{'greater' if above else 'less'} than {threshold}.",
                 f"SELECT {ident(key.name)} FROM {ident(t.name)} WHERE {ident(column.name)} + 0 "
                 f"{'>' if above else '<'} {threshold}")  # fmt: skip


def _insert(t: Table, rng: random.Random) -> Draft:
    key = t.columns[0]
    unused = [k for k in key.values if k not in t.column_values(key)]
    values = [rng.choice(unused), *(rng.choice(c.values) if c.kind == "cat" else str(rng.randint(c.low, c.high))
                                    for c in t.columns[1:])]  # fmt: skip
    said = ", ".join(f"{c.name} {v}" for c, v in zip(t.columns, values, strict=True))
    names = ", ".join(ident(c.name) for c in t.columns)
    return Draft("INSERT", f"Add a new entry to the {t.entity}: {said}.",
                 f"INSERT INTO {ident(t.name)} ({names}) VALUES ({', '.join(quote(v) for v in values)})")  # fmt: skip


def _update(t: Table, rng: random.Random) -> Draft:
    key = t.columns[0]
    column = rng.choice(t.columns[1:])
    row = rng.choice(t.rows)
    new = rng.choice(column.values) if column.kind == "cat" else str(rng.randint(column.low, column.high))
    if rng.random() < 0.5 or column.kind == "num":
        return Draft("UPDATE", f"Set the {column.name} of {row[0]} to {new}.",
                     f"UPDATE {ident(t.name)} SET {ident(column.name)} = {quote(new)} "
                     f"WHERE {ident(key.name)} = {quote(row[0])}")  # fmt: skip
    old = rng.choice(t.column_values(column))
    every = f"every one of the {t.entity} with {column.name} {old}"
    return Draft("UPDATE", f"Change the {column.name} of {every} to {new}.",
                 f"UPDATE {ident(t.name)} SET {ident(column.name)} = {quote(new)} "
                 f"WHERE {ident(column.name)} = {quote(old)}")  # fmt: skip


def _delete(t: Table, rng: random.Random) -> Draft:
    column = rng.choice(t.of_kind("num"))
    threshold = rng.choice(t.column_values(column))
    return Draft("DELETE", f"Remove the {t.entity} whose {column.name} is below {threshold}.",
                 f"DELETE FROM {ident(t.name)} WHERE {ident(column.name)} + 0 < {threshold}")  # fmt: skip


FAMILIES: tuple[Callable[[Table, random.Random], Draft], ...] = (
    _lookup,
    _counting,
    _aggregate,
    _aggregate,
    _ranking,
    _comparison,
    _insert,
    _insert,
    _update,
    _update,
    _delete,
)  # weighted like DBBench: about half SELECT-like, the rest modifications


def draft_record(rng: random.Random) -> dict[str, Any]:
    """A DBBench record with its gold SQL and no answer yet."""
    table = draw_table(rng)
    draft = rng.choice(FAMILIES)(table, rng)
    record: dict[str, Any] = {
        "description": draft.description,
        "add_description": f"The name of this table is {table.name}, and the headers of this table are "
        + ",".join(c.name for c in table.columns) + ".",
        "table": {"table_name": table.name, "table_info": {
            "columns": [{"name": c.name, "type": "TEXT"} for c in table.columns], "rows": table.rows}},
        "type": [draft.category],
        "label": [draft.sql] if draft.category in MODIFYING else [],
    }  # fmt: skip
    if draft.category not in MODIFYING:
        record["sql"] = {"query": draft.sql}
    return record


def _operation(sql: str) -> str:
    return f"Action: Operation\n```sql\n{sql}\n```"


async def solve(record: dict[str, Any], server: MariaDBServer) -> dict[str, Any] | None:
    """The record with its answer as MariaDB gives it, or None when the answer would be ambiguous or failed."""
    from cycleqd.envs.db.env import result_values  # the same reading of a result as gold replay uses

    task = parse_db_task({**record, "answer_md5": ""}, "<generated>", 0)
    episode = DBBenchEpisode(task, server)
    try:
        await episode.begin()
        unchanged = await episode.table_hash()
        observation = await episode.step(_operation(task.gold_sql or ""))
        if task.modifies:
            table_hash = await episode.table_hash()
            # a modification that changes nothing teaches nothing (and answering "done" alone would score)
            return None if table_hash == unchanged else {**record, "answer_md5": table_hash}
        values = result_values(observation or "")
        if not values or len(values) > MAX_VALUES or "None" in values or _tied(task.gold_sql or "", values, record):
            return None
        return {**record, "label": values}
    except EpisodeSetupError:
        return None
    finally:
        await episode.close()


def _tied(sql: str, values: list[str], record: dict[str, Any]) -> bool:
    """A ranking whose top value is shared by several rows has no single answer."""
    if "ORDER BY" not in sql:
        return False
    columns = [c["name"] for c in record["table"]["table_info"]["columns"]]
    ranked = next(c for c in columns if f"{ident(c)} + 0" in sql.split("ORDER BY")[1])
    index = columns.index(ranked)
    numbers = [int(row[index]) for row in record["table"]["table_info"]["rows"]]
    best = max(numbers) if "DESC" in sql else min(numbers)
    return numbers.count(best) > 1


def task_key(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([record["description"], record["table"]], sort_keys=True).encode()).hexdigest()


def task_text(record: dict[str, Any]) -> str:
    """What near-duplicates are judged on: the question and the table's name and headers (not its rows)."""
    return f"{record['description']} {record.get('add_description', '')}"


async def generate_split(count: int, seed: int, server: MariaDBServer, taken: set[str], concurrency: int = 4,
                         progress: Callable[[int], None] = lambda _: None,
                         held_out: WordSetIndex | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """`count` solved tasks drawn from `seed`, none whose key is in `taken` (which gains theirs) nor a near-duplicate
    of a `held_out` task."""
    rng = random.Random(seed)
    tasks: list[dict[str, Any]] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(record: dict[str, Any]) -> dict[str, Any] | None:
        async with gate:
            if len(tasks) >= count:  # the split is full: a surplus draft is not solved (it took a database each)
                return None
            return await solve(record, server)

    near = 0
    while len(tasks) < count:
        drafts = []
        while len(drafts) < (count - len(tasks)) * 5 // 4 + 1:
            record = draft_record(rng)
            if held_out is not None and held_out.near(task_text(record)):
                near += 1
                if near > MAX_NEAR_DRAWS_PER_TASK * count:  # the held-out splits cover what the generator can draw
                    raise _crowded(count, near, len(tasks) + len(drafts))
                continue
            if task_key(record) not in taken:
                taken.add(task_key(record))
                drafts.append(record)
        # Taken in draft order, so the split is the same whatever order MariaDB answers in, and each task is
        # reported as it is kept: a gather reported a whole batch (2,500 drafts for 2,000 train tasks) at its end.
        for job in [asyncio.ensure_future(one(r)) for r in drafts]:
            solved = await job
            if solved is not None and len(tasks) < count:
                tasks.append(solved)
                progress(len(tasks))
    return tasks


def _crowded(count: int, near: int, found: int) -> TaskFormatError:
    return TaskFormatError(f"a split of {count} generated DB tasks", None, "(count)",
                           f"fewer: after {near:,} drafts too near the splits drawn before it, it has {found}; "
                           "ask for smaller held-out splits")  # fmt: skip


SPLIT_SEEDS = {"test": 1, "dev": 2, "train": 3}  # test first: the held-out sets are drawn before anything else


def generate_suite(out: Path, counts: dict[str, int], start_sandbox: SandboxStarter, seed: int = 0,
                   progress: Callable[[str, int], None] = lambda *_: None) -> Path:  # fmt: skip
    """Write `<split>.jsonl` for each split of `counts` under `out`; splits already written are kept (resumable).
    The MariaDB that answers the tasks runs in a sandbox `start_sandbox` gives (of the `mariadb` image).
    `progress(split, n)`: 0 as a split to generate begins, then its count of tasks each time one is kept."""
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    held_out = WordSetIndex()
    order = sorted(counts, key=lambda s: SPLIT_SEEDS.get(s, 9))
    missing = [split for split in order if not (out / f"{split}.jsonl").is_file()]
    for split in order:  # finished splits keep later ones disjoint from them and clear of their near-duplicates
        path = out / f"{split}.jsonl"
        if path.is_file():
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            taken.update(task_key(r) for r in records)
            for record in records:  # near-duplication is symmetric: whichever split came first, they stay apart
                held_out.add(task_text(record))
    if missing:
        asyncio.run(_generate_missing(out, missing, counts, seed, taken, held_out, progress, start_sandbox))
    return out


async def _generate_missing(out: Path, splits: list[str], counts: dict[str, int], seed: int, taken: set[str],
                            held_out: WordSetIndex, progress: Callable[[str, int], None],
                            start_sandbox: SandboxStarter) -> None:  # fmt: skip
    async with MariaDBServer(start_sandbox) as server:
        for split in splits:
            progress(split, 0)  # the split begins: a caller can say so before its first task is solved
            split_seed = seed * 1000 + SPLIT_SEEDS.get(split, 9)
            tasks = await generate_split(counts[split], split_seed, server, taken,
                                         progress=lambda n, s=split: progress(s, n), held_out=held_out)  # fmt: skip
            for task in tasks:  # the splits drawn after this one stay clear of it
                held_out.add(task_text(task))
            await asyncio.to_thread(_write_jsonl, out / f"{split}.jsonl", tasks)


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text("".join(json.dumps(r) + "\n" for r in records))
    temporary.replace(path)


def suite_folder(cache: Path, counts: dict[str, int], seed: int) -> Path:
    """Where the cached suite of these sizes and seed lives."""
    key = json.dumps({"v": GENERATOR_VERSION, "counts": counts, "seed": seed}, sort_keys=True)
    return cache / "suites" / f"db-generated-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
