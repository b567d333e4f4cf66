"""Finding what a reading command was asked about: an existing store, a run by id or unique id prefix, the models of
an evolution. Reading commands create nothing: a missing store is an error, not a new file."""

from __future__ import annotations

from pathlib import Path

from cycleqd.db.evolution_store import EvolutionStore
from cycleqd.db.schema import CandidateKind, Run, RunKind
from cycleqd.db.store import Store, StoreOpenError, open_store
from cycleqd.errors import UserError


class RunLookupError(UserError):
    """What the user asked for is not in the store; the message says what is."""


def open_existing_store(db_path: Path) -> Store:
    if not Path(db_path).expanduser().is_file():
        raise StoreOpenError(f"{db_path}: no such store (run `cycleqd eval` first, or pass --db PATH)")
    return open_store(db_path)


def find_run(store: Store, text: str, db_path: Path | str, kind: RunKind | None = None) -> Run:
    """The run whose id is `text` or starts with it (git-style prefixes); with `kind`, only a run of that kind."""
    matches = store.runs_matching(text)
    if not matches:
        raise RunLookupError(f"no run {text!r} in {db_path} (list them with: cycleqd runs --db {db_path})")
    if len(matches) > 1 and text not in matches:
        shown = ", ".join(sorted(matches)[:5])
        raise RunLookupError(f"{text!r} matches {len(matches)} runs ({shown}…); give more of the id")
    run = store.get_run(text if text in matches else matches[0])
    assert run is not None
    if kind is not None and run.kind != kind:
        wanted = "an evolution" if kind is RunKind.EVOLVE else f"an {kind} run"
        raise RunLookupError(f"run {run.id} is an {run.kind} run, not {wanted}; `cycleqd runs --db {db_path}` lists "
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
            raise RunLookupError(f"--candidate {which!r}: expected 'all', 'final' or a candidate id") from None
        if candidate is None or candidate.run_id != run.id:
            raise RunLookupError(f"evolution {run.id} has no candidate {which}")
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
