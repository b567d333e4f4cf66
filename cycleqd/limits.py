"""Upper bounds no machine gets past, shared by the eval request (`cycleqd/eval_request.py`) and the evolution's config
(`evolver/config.py`): every concurrent episode is a container, every server a process, rounds and repeats
multiply episodes, and an archive has bins^(tasks-1) cells. A typo fails at once instead of hours later."""

from __future__ import annotations

MAX_LIMIT = 10**7  # tasks per environment
MAX_REPEATS = 1000
MAX_CONCURRENCY = 1024
MAX_ROUNDS = 1000
MAX_TOKENS = 1_000_000
MAX_GENERATIONS = 10_000_000
MAX_CELLS = 10_000_000  # per archive: bins ** (tasks - 1)
MAX_SERVERS = 1024
MAX_SEED = 2**63 - 1
