"""The user-error family: what the CLI prints as one line naming the thing and the fix, with exit status 2.

A user error is something the person running cycleqd can correct (a typo in an option, a model that is not there,
an endpoint that does not answer, a file in the wrong format). Anything else is a bug and keeps its traceback.
`-v` shows the traceback of a user error too.

The layers below raise their own types (they import nothing of ours); `USER_ERRORS` lists the ones that are the
user's to fix, and `is_user_error` adds the store's troubles (locked, damaged, unwritable) that only SQLite's
error code tells apart from a bug, so the boundary in `cli.main` is the only place that decides how they look.
Where the Python API hands such an error to its caller, `as_user_errors` makes it a `UserError`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from sqlalchemy.exc import DatabaseError

from cycleqd.db.store import NoSuchRunError, StoreOpenError, store_trouble
from cycleqd.envs.errors import NoTasksError, TaskFormatError, UnknownEnvironmentError
from cycleqd.envs.registry import UnknownSplitError
from cycleqd.evolver.checkpoint_files import CheckpointError
from cycleqd.evolver.config import ConfigError
from cycleqd.sandboxes.errors import SandboxError
from cycleqd.serving.errors import EndpointError, ModelRefError, ServerDiedError, UnknownModelError


class UserError(Exception):
    """A mistake the user can fix; the message names the thing and the fix."""

    exit_status = 2


class RayClusterError(UserError):
    """The cluster cannot run this: Ray missing, unreachable, no slots, or nodes that disagree; the message says
    what to do."""


class BadOptionError(UserError):
    """An option's value is out of its range."""

    def __init__(self, option: str, value: object, expected: str) -> None:
        super().__init__(f"{option} {value}: expected {expected}")
        self.option, self.value, self.expected = option, value, expected


class UnknownRunError(UserError):
    """The store has no run with this id or id prefix (or not of the kind the command needs)."""


class ResumeConflictError(UserError):
    """An option given with --resume differs from what the run was started with."""


class IncompleteRunError(UserError):
    """The run ended with planned episodes missing from the store; resuming it plays them."""

    exit_status = 1


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run; the run (if one was created) is marked interrupted and resumable."""

    exit_status = 130  # the CLI's, as a shell's for a process Ctrl-C stopped (128 + SIGINT)

    def __init__(self, run_id: str | None) -> None:
        super().__init__(run_id)
        self.run_id = run_id


def explained(exc: BaseException, key_env: str) -> BaseException:
    """A serving failure the user can fix, with the fix: vLLM that is not installed, an endpoint that refuses us
    while the API key's variable is unset. Anything else comes back unchanged."""
    text = str(exc)
    if isinstance(exc, ServerDiedError) and "No module named 'vllm" in text:
        return UserError(
            "vLLM is not installed for this Python: pip install 'cycleqd[vllm]' (a GPU machine), or serve the model "
            "with --server transformers"
        )
    if isinstance(exc, EndpointError) and "HTTP 401" in text and not os.environ.get(key_env):
        return EndpointError(f"{text} — ${key_env} is not set: export it with the endpoint's API key, or name "
                             "another variable with --api-key-env")  # fmt: skip
    return exc


USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    StoreOpenError,
    TaskFormatError,
    NoTasksError,
    UnknownEnvironmentError,
    UnknownSplitError,
    ConfigError,
    CheckpointError,  # an expert or base folder that is not a complete safetensors checkpoint
    ModelRefError,
    EndpointError,
    UnknownModelError,
    SandboxError,
    NoSuchRunError,  # the store's: a run removed (`cycleqd runs rm`) while it ran
)


def is_user_error(exc: BaseException) -> bool:
    """One of `USER_ERRORS`, or a database error that is the store's state rather than ours (`store_trouble`). An
    IntegrityError, or any statement SQLite refuses, is a bug: it keeps its traceback."""
    return isinstance(exc, USER_ERRORS) or (isinstance(exc, DatabaseError) and store_trouble(exc) is not None)


@contextlib.contextmanager
def as_user_errors() -> Iterator[None]:
    """A lower layer's user error (one of `USER_ERRORS`) raised inside comes out as a `UserError` with its message,
    caused by it: an API caller catches every mistake as `cycleqd.UserError`, while the layers below still import
    nothing of ours (so their types cannot be UserErrors themselves)."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, UserError) or not is_user_error(exc):
            raise
        raise UserError(one_line(exc)) from exc


def one_line(exc: BaseException) -> str:
    """How a user error reads on the terminal: its message, on one line."""
    if isinstance(exc, DatabaseError) and (trouble := store_trouble(exc)):
        return trouble
    return " ".join(str(exc).split()) or type(exc).__name__
