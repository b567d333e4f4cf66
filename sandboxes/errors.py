"""Errors the sandbox layer raises. Each says what failed and, where it can, what to do about it."""


class SandboxError(Exception):
    """Base class: something went wrong in the sandbox layer (not in the command being run)."""


class EngineUnavailableError(SandboxError):
    """No Docker engine answers. The message says how to install or start one."""


class ImageMissingError(SandboxError):
    """A sandbox asked for an image the engine does not have. Build it with `cycleqd images build`."""


class ImageBuildError(SandboxError):
    """Building a sandbox image failed; the message carries the tail of the build log."""


class SessionClosedError(SandboxError):
    """The persistent shell ended (the agent typed `exit`, or the container died)."""


class SandboxStoppedError(SandboxError):
    """The sandbox was used after `stop()`, or its container vanished."""


class PoolClosedError(SandboxError):
    """`acquire()` on a pool that was closed."""


class WitnessUnavailableError(SandboxError):
    """This host cannot watch what a sandbox's checks open: it needs root on the engine's own host, overlay2
    storage and a kernel with fanotify permission events (Linux 5.1+, CONFIG_FANOTIFY_ACCESS_PERMISSIONS)."""
