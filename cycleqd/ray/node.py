"""What one evaluation slot owns on its node when cycleqd runs on a Ray cluster: a model server and the node's
sandbox runtime (warm pool, MariaDB). Plain Python, no Ray import: `cycleqd.ray.backend` turns this class into a
Ray actor pinned to one slot (one GPU, or one `cycleqd_slot` of a CPU node), and the head calls its methods.

The node plays episodes and returns their records; it never opens the store. The head stores each record as it
arrives, so a slot lost with its node loses nothing committed, and a re-dispatched episode cannot be stored twice.

An evolution's candidates arrive as genomes (through Ray's object store). The node materialises them from the
base checkpoint and the SVD cache found at the same paths as on the head: on a shared filesystem the cache is
read as it is; otherwise `build_svd_cache` builds it once on the node (keyed by the base's and the experts'
content identities, so a stale copy is never used).
"""

from __future__ import annotations

import asyncio
import shutil
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

from cycleqd.db.store import EpisodeKey, EpisodeRecord
from cycleqd.eval.orchestrator import EvalSettings, play_record
from cycleqd.eval.runtime import EnvRuntime
from cycleqd.eval.tasks import EvalTask
from cycleqd.evolution.loop import CandidateUnderTest
from cycleqd.serving.manager import ServerManager
from cycleqd.serving.model_ref import LocalCheckpoint, ModelRef
from cycleqd.serving.resolve import manager_for, resolve_model


@dataclass(frozen=True)
class ModelSpec:
    """How a node gets its model: a reference as the user typed it (resolved on the node), or an evolution's base
    with its experts and SVD cache root, from which candidates are materialised."""

    ref: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    server: str = "auto"
    base: str | None = None
    experts: tuple[str, ...] = ()
    cache_root: str | None = None
    checkpoints: str | None = None  # where this node writes the candidate it serves (deleted when it moves on)
    dtype: str = "auto"  # the server's `--dtype` (serving.resolve.DTYPES)
    deterministic: bool = False  # batch-invariant decoding (`--deterministic`), as on one machine


class NodeSlot:
    """One slot: a server for one model at a time and the sandbox runtime its episodes play in."""

    def __init__(self, model: ModelSpec, tasks: list[EvalTask], run_id: str, settings: EvalSettings) -> None:
        self.model = model
        self.tasks = tasks
        self.run_id = run_id
        self.settings = settings
        self._stack = AsyncExitStack()
        self._started = asyncio.Lock()
        self.manager: ServerManager | None = None
        self.runtime: EnvRuntime | None = None
        self._serving: Path | None = None  # a materialised candidate, deleted when the slot moves on

    async def _start(self, ref: ModelRef) -> tuple[ServerManager, EnvRuntime]:
        async with self._started:
            if self.manager is None or self.runtime is None:
                # Ray gives a GPU actor its GPU as device 0 (CUDA_VISIBLE_DEVICES), hence slot 0 on every node.
                manager = manager_for(ref, server=self.model.server, slot=0, dtype=self.model.dtype,
                                      deterministic=self.model.deterministic)  # fmt: skip
                self.manager = await self._stack.enter_async_context(manager)
                runtime = EnvRuntime.of(self.tasks, run_id=self.run_id, max_sandboxes=self.settings.max_sandboxes,
                                        settings=self.settings.episode)  # fmt: skip
                self.runtime = await self._stack.enter_async_context(runtime)
            return self.manager, self.runtime

    async def serve_model(self) -> tuple[str, str]:
        """Serve the run's one model; its identity (which the head checks is the same on every node) and label."""
        ref = await asyncio.to_thread(resolve_model, self.model.ref, key_env=self.model.api_key_env)
        manager, _ = await self._start(ref)
        await manager.serve(ref)
        return await asyncio.to_thread(ref.identity), ref.label

    async def serve_candidate(self, candidate: CandidateUnderTest) -> tuple[str, str]:
        """Serve an evolution's candidate (a checkpoint as it is, or a genome materialised here); its identity and
        label."""
        from cycleqd.evolver.materialize import materialize
        from cycleqd.evolver.svd_cache import build_svd_cache

        assert self.model.base is not None and self.model.cache_root is not None and self.model.checkpoints
        path = candidate.checkpoint
        if path is None:
            assert candidate.genome is not None and candidate.genome_hash is not None
            experts = [Path(e) for e in self.model.experts]
            cache = await asyncio.to_thread(build_svd_cache, Path(self.model.base), experts,
                                            Path(self.model.cache_root), progress=False)  # fmt: skip
            out = Path(self.model.checkpoints) / candidate.genome_hash
            path = await asyncio.to_thread(materialize, candidate.genome, cache, out)
        ref = LocalCheckpoint(path)
        manager, _ = await self._start(ref)
        await manager.serve(ref)
        previous, self._serving = self._serving, path if candidate.checkpoint is None else None
        if previous is not None and previous != path:
            shutil.rmtree(previous, ignore_errors=True)
        if candidate.genome_hash:
            return f"genome:{candidate.genome_hash}", str(path)
        return await asyncio.to_thread(ref.identity), str(path)

    async def play(self, task: EvalTask, key: EpisodeKey) -> EpisodeRecord:
        """One episode of the model this slot serves, to its record (not stored here)."""
        assert self.manager is not None and self.runtime is not None, "serve a model before playing episodes"
        return await play_record(self.runtime, self.manager, task, key, self.settings)

    async def close(self) -> None:
        await self._stack.aclose()
