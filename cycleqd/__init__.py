"""cycleqd: benchmark LLMs on multi-turn agent tasks in Docker sandboxes, and evolve merged models with CycleQD.

The Python API (the CLI is a thin layer over it)::

    import cycleqd

    result = cycleqd.evaluate(cycleqd.EvalRequest(tasks=("db",), limit=2), db="runs.db")
    print(result.run_id, result.score("db").score)
    config = cycleqd.load_config("evolve.yaml")
    evolved = cycleqd.evolve(config, db="runs.db")

In an async application, `await cycleqd.evaluate_async(...)` and `await cycleqd.evolve_async(...)` run on its loop;
`evaluate` and `evolve` called where a loop already runs (a Jupyter cell) run theirs on a worker thread.

Mistakes the caller can fix raise `cycleqd.UserError` (or one of `cycleqd.errors.USER_ERRORS`). Importing this
package is light: each name loads its module on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cycleqd.errors import UserError
    from cycleqd.eval.evaluate import evaluate, evaluate_async
    from cycleqd.eval_request import EvalRequest
    from cycleqd.evolution.run import evolve, evolve_async
    from cycleqd.evolver.config import EvolveConfig, load_config
    from cycleqd.results.values import EnvScore, EvalResult, EvolveResult

_EXPORTS = {
    "evaluate": "cycleqd.eval.evaluate",
    "evaluate_async": "cycleqd.eval.evaluate",
    "evolve": "cycleqd.evolution.run",
    "evolve_async": "cycleqd.evolution.run",
    "EvalRequest": "cycleqd.eval_request",
    "EvolveConfig": "cycleqd.evolver.config",
    "load_config": "cycleqd.evolver.config",
    "EvalResult": "cycleqd.results.values",
    "EvolveResult": "cycleqd.results.values",
    "EnvScore": "cycleqd.results.values",
    "UserError": "cycleqd.errors",
}
__all__ = ["EnvScore", "EvalRequest", "EvalResult", "EvolveConfig", "EvolveResult", "UserError", "evaluate",
           "evaluate_async", "evolve", "evolve_async", "load_config"]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cycleqd' has no attribute {name!r}")
    module = import_module(_EXPORTS[name])
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
