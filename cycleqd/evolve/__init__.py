"""The evolution: `run` (the feature), `loop`, `evaluator`, `report`, `command`.

`cycleqd.evolve(config, db=…)` is the API's entry point, and `cycleqd.evolve` is also this package (Python binds
a subpackage to its parent's attribute once imported), so the package itself is callable: calling it calls
`cycleqd.evolve.run.evolve`.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from cycleqd.evolve.run import evolve

        return evolve(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
