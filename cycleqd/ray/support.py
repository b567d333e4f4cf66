"""What the rest of cycleqd needs to know about the Ray backend without importing Ray: what the backend offers
(`RayBackend`), and how to load it (only when a run asks for a cluster; Ray is the optional extra `cycleqd[ray]`).
Imports run one way, support → backend: the backend's user error lives with the others, in `cycleqd.errors`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from cycleqd.errors import RayClusterError

if TYPE_CHECKING:
    from cycleqd.db.store import Store
    from cycleqd.eval.orchestrator import EpisodeResult, EvalSettings
    from cycleqd.eval.tasks import EvalTask
    from cycleqd.evolution.loop import CandidateEvaluator
    from cycleqd.evolver.config import EvolveConfig

    class ClusterEvaluator(CandidateEvaluator, Protocol):
        async def close(self) -> None: ...


class RayBackend(Protocol):
    """What `cycleqd.ray.backend` offers the features (the module itself satisfies it)."""

    def connect(self, address: str) -> None: ...

    async def eval_on_cluster(
        self, store: Store, run_id: str, config: dict[str, Any], tasks: list[EvalTask], settings: EvalSettings,
        on_plan: Callable[[int], None], on_result: Callable[[EpisodeResult], None],
    ) -> int: ...  # fmt: skip

    def RayEpisodeEvaluator(  # noqa: N802 - the backend's class, called as a constructor
        self, store: Store, run_id: str, config: EvolveConfig, base: Path, cache_root: Path, checkpoints: Path,
        gpus: bool = False,
    ) -> ClusterEvaluator: ...  # fmt: skip


def ray_backend() -> RayBackend:
    """`cycleqd.ray.backend`, or a RayClusterError saying how to install Ray."""
    try:
        import cycleqd.ray.backend as backend
    except ModuleNotFoundError as exc:
        if exc.name != "ray":
            raise
        raise RayClusterError("running on a Ray cluster needs Ray: pip install 'cycleqd[ray]'") from None
    return cast(RayBackend, backend)
