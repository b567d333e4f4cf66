"""What the rest of cycleqd needs to know about the Ray backend without importing Ray: its user error, and how
to load it (only when a run asks for a cluster; Ray is the optional extra `cycleqd[ray]`)."""

from __future__ import annotations

from types import ModuleType

from cycleqd.errors import UserError


class RayClusterError(UserError):
    """The cluster cannot run this: Ray missing, unreachable, no slots, or nodes that disagree; the message says
    what to do."""


def ray_backend() -> ModuleType:
    """`cycleqd.ray.backend`, or a RayClusterError saying how to install Ray."""
    try:
        import cycleqd.ray.backend as backend
    except ModuleNotFoundError as exc:
        if exc.name != "ray":
            raise
        raise RayClusterError("running on a Ray cluster needs Ray: pip install 'cycleqd[ray]'") from None
    return backend
