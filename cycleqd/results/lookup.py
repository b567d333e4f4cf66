"""Finding what a reading command was asked about: an existing store, a run by id or unique id prefix, the models of
an evolution. Reading commands create nothing: a missing store is an error, not a new file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.db.schema import Candidate, CandidateKind, Run, RunKind
from cycleqd.db.store import Store, StoreOpenError, open_store
from cycleqd.errors import UnknownRunError, UserError


class RunLookupError(UserError):
    """What the user asked for is not in the store; the message says what is."""


def open_existing_store(db_path: Path) -> Store:
    if not Path(db_path).expanduser().is_file():
        raise StoreOpenError(f"{db_path}: no such store (run `cycleqd eval` first, or pass --db PATH)")
    return open_store(db_path)


def find_run(store: Store, text: str, db_path: Path | str, kind: RunKind | None = None) -> Run:
    """The run whose id is `text` or starts with it (git-style prefixes); with `kind`, only a run of that kind.
    UnknownRunError when there is none, RunLookupError when the prefix is shared by several."""
    matches = store.runs_matching(text)
    if len(matches) > 1 and text not in matches:
        shown = ", ".join(sorted(matches)[:5])
        raise RunLookupError(f"{text!r} matches {len(matches)} runs ({shown}…); give more of the id")
    # None: no such id, or the run was removed (`cycleqd runs rm` elsewhere) since it matched
    run = store.get_run(text if text in matches else matches[0]) if matches else None
    if run is None:
        raise UnknownRunError(f"no run {text!r} in {db_path} (list them with: cycleqd runs --db {db_path})")
    if kind is not None and run.kind != kind:
        wanted = "an evolution" if kind is RunKind.EVOLVE else f"an {kind} run"
        raise UnknownRunError(f"run {run.id} is an {run.kind} run, not {wanted}; `cycleqd runs --db {db_path}` lists "
                              "them")  # fmt: skip
    return run


def candidate_model_ids(store: Store, run: Run, which: str) -> tuple[int, ...] | None:
    """The models of an evolution's candidates: 'all' (None: no restriction), 'final', or a candidate id."""
    if which == "all":
        return None
    if run.kind is not RunKind.EVOLVE:
        raise RunLookupError(f"run {run.id} is an {run.kind} run; --candidate applies to evolution runs only")
    evo = EvolutionStore(store, run.id)
    if which == "final":
        chosen = evo.candidates(CandidateKind.FINAL)
        if not chosen:
            raise RunLookupError(f"evolution {run.id} has no final model yet (its status: {run.status})")
    else:
        try:
            candidate = evo.candidate(int(which))
        except ValueError:
            candidate = None
        if candidate is None or candidate.run_id != run.id:
            ids = id_ranges([c.id for c in evo.candidates()])
            raise RunLookupError(f"--candidate {which}: evolution {run.id} has no such candidate; expected all, "
                                 f"final or one of its candidate ids ({ids or 'none yet'})")  # fmt: skip
        chosen = [candidate]
    model_ids = tuple(c.model_id for c in chosen if c.model_id is not None)
    if not model_ids:
        raise RunLookupError(f"candidate {which} of {run.id} has not been evaluated, so it has no episodes")
    return model_ids


def model_label(reference: str, identity: str) -> str:
    """Short enough for a column, distinct enough to tell two models apart: the folder or model name, and for a
    checkpoint the first characters of its content hash (two checkpoints in folders of one name differ there)."""
    name = Path(reference).name if reference.startswith(("/", ".", "~")) else reference
    if identity.startswith(("hub:", "endpoint:")):
        return name
    return f"{name}@{identity.split(':', 1)[-1][:8]}"  # sha256:… (a checkpoint), genome:… (an evolution's child)


def id_ranges(ids: list[int]) -> str:
    """Ids as runs of consecutive numbers ("3–9, 12"): an evolution's hundreds of candidates in one line."""
    spans: list[list[int]] = []
    for number in sorted(ids):
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(str(lo) if lo == hi else f"{lo}–{hi}" for lo, hi in spans)


@dataclass(frozen=True)
class ModelRole:
    """What a model was in an evolution: its candidate's kind and the name the final table gives it (base, expert
    <task>, naive merge, CycleQD final, a baseline's own label) or, for a child or a search merge, its place."""

    kind: CandidateKind
    label: str


# A model several candidates share (a final merge that equals a child, a baseline that is an expert's checkpoint)
# takes the role the final table knows it by; a child's or a search merge's role is the least telling.
ROLE_ORDER = (CandidateKind.FINAL, CandidateKind.MERGE, CandidateKind.BASELINE, CandidateKind.EXPERT,
              CandidateKind.BASE, CandidateKind.SEARCH, CandidateKind.CHILD)  # fmt: skip


def model_roles(store: Store, run: Run) -> dict[int, ModelRole]:
    """Each evaluated model of an evolution → its role; an eval run's models have none (an empty mapping)."""
    if run.kind is not RunKind.EVOLVE:
        return {}
    names = [str(t.get("name", "")) if isinstance(t, dict) else str(t) for t in run.config.get("tasks", [])]
    roles: dict[int, ModelRole] = {}
    for candidate in EvolutionStore(store, run.id).candidates():
        if candidate.model_id is None:
            continue  # never evaluated: no episode ran as it
        held = roles.get(candidate.model_id)
        if held is None or ROLE_ORDER.index(candidate.kind) < ROLE_ORDER.index(held.kind):
            roles[candidate.model_id] = ModelRole(candidate.kind, _role_label(candidate, names))
    return roles


def _role_label(candidate: Candidate, names: list[str]) -> str:
    kind = candidate.kind
    if kind is CandidateKind.EXPERT:
        return f"expert {names[candidate.slot] if candidate.slot < len(names) else candidate.slot}"
    if kind is CandidateKind.BASELINE:
        return str(candidate.mutation.get("label", "baseline"))
    fixed = {CandidateKind.BASE: "base", CandidateKind.MERGE: "naive merge", CandidateKind.FINAL: "CycleQD final"}
    return fixed.get(kind) or f"{kind} g{candidate.generation}.{candidate.slot}"  # a child, a search merge
