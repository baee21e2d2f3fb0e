"""Every error class of the farm, its exit code, and which failure of a job each one is.

`FarmError` messages are meant to be printed as they are: they say what was wrong and where. The
CLI prints `farm: error: MESSAGE` and exits with the error's `exit_code`; the few exits that are no
error class are the `EXIT_*` constants below. The table of every exit code, for users, is
docs/cli.md (tests/test_errors.py checks it against this module).

The API answers a `FarmError` with its class's name (`error_class`) beside `detail`, and the
CLI's API client raises that class again (`error_class`, `FarmError.from_message`): an error has the
same exit code with `--server` as on the farm's own host.

A job attempt that ends in an exception is one of three kinds (`classify`, used by the worker's
pipeline and its task; the kind is the job's `failure_kind`):

- `package`: a `PackageFailure`. Recorded with the step and the log, never retried.
- `infrastructure`: an `InfrastructureFault`, an `OSError` (the disk, the network, a tool that
  cannot start), a lost connection of httpx, kombu, redis or the database, or any other `FarmError`
  (a deliberate error with a message, e.g. a worker without the job's interpreter or image). A
  full disk, an I/O error or a lost connection is infrastructure wherever it occurs, even under a
  `PackageFailure` (a build that stopped with "No space left on device"). Retried by the task in
  place with backoff for `api_retry_seconds`, then failed as `infrastructure`, the error naming the
  real fault (`fault_of`).
- `internal`: anything else (a `KeyError`, a `TypeError`, ...) is a bug in the farm. The job fails at
  once, not retried, with the error `internal error: TYPE: MESSAGE` and the full traceback in its log.

`JobStopped` is no failure (the attempt was voided): the pipeline and the task handle it first.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Literal, Self

if TYPE_CHECKING:
    from farm.containers import ExecResult
    from farm.util.cmd import Result

FailureKind = Literal["package", "infrastructure", "internal"]

_TAIL = 4000  # the end of a failed command's output kept in its error message


class FarmError(Exception):
    """An error with a message for a person. `exit_code` is what the CLI exits with."""

    exit_code = 1

    @classmethod
    def from_message(cls, message: str) -> Self:
        """This error with only its message, as the API client raises it from an answer's
        `error_class` and `detail`: the attributes a subclass's constructor sets are absent."""
        exc = cls.__new__(cls)
        Exception.__init__(exc, message)
        return exc


def error_class(name: str) -> type[FarmError]:
    """The error class of this module called `name`; `FarmError` for any other name."""
    cls = globals().get(name)
    return cls if isinstance(cls, type) and issubclass(cls, FarmError) else FarmError


# Exits of the CLI that are no error class --------------------------------------------------------

EXIT_OK = 0
EXIT_JOBS_FAILED = 1  # `submit --wait`: every job ended, not all of them succeeded
EXIT_NOT_VERIFIED = 1  # `farm verify`: a check failed
EXIT_DOCTOR_FOUND = 1  # `farm doctor`: it found differences it did not fix (without --fix)
EXIT_USAGE = 2  # argparse: the command line is not one `farm` knows
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_BROKEN_PIPE = 141  # the reader of stdout left (`farm status | head`)


class ConfigError(FarmError):
    exit_code = 2


class UsageError(FarmError):
    """A command line argparse accepts but the command cannot carry out as given."""

    exit_code = EXIT_USAGE


class NoFarm(FarmError):
    """A command that reads or changes what a farm holds found no farm's database; it created none."""

    exit_code = 11


class WaitTimeout(FarmError):
    """`submit --wait` ran out of time before every job ended (the jobs go on)."""

    exit_code = 124  # as timeout(1)


class RecipeError(FarmError):
    """One or more recipe files are invalid; `problems` holds every (file, key path, message)."""

    exit_code = 3

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        self.problems = problems
        lines = [f"{f}: {path or '<root>'}: {msg}" for f, path, msg in problems]
        super().__init__("invalid recipe:\n  " + "\n  ".join(lines))


class SdistError(FarmError):
    """The submitted file is not an acceptable sdist (not an archive, hostile members, too big, ...)."""

    exit_code = 4


class WheelError(SdistError):
    """An uploaded wheel that is not acceptable: its archive, tags, WHEEL, METADATA or RECORD (farm/util/wheel_check.py)."""


class UpstreamError(FarmError):
    """The upstream index does not have what was asked for, or its file does not match its record."""

    exit_code = 5


class StateError(FarmError):
    """An illegal job state transition."""

    exit_code = 6


class NotFound(FarmError):
    exit_code = 7


class PromotionRefused(FarmError):
    exit_code = 8

    def __init__(self, what: str, channel: str, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__(f"{what} may not enter {channel}:\n  " + "\n  ".join(reasons))


class UploadError(FarmError):
    exit_code = 9


# A job's failures (see `classify`) -----------------------------------------------------------------


class PackageFailure(FarmError):
    """The package failed (build error, repair impossible, tests failed). Recorded, not retried."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        super().__init__(f"{step}: {message}")


class CommandTimeout(PackageFailure):
    pass


class InfrastructureFault(FarmError):
    """Something of ours failed (tool missing, disk, network to the farm). Retried."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        super().__init__(f"{step}: {message}")


class StorageConflict(InfrastructureFault):
    """A write-once object exists already with other bytes."""

    def __init__(self, key: str, detail: str = "") -> None:
        self.key = key
        super().__init__("storage", detail or f"{key} is stored already with other content; stored objects are "
                         "write-once")


class JobStopped(FarmError):
    """The coordinator voided the attempt a worker is running (cancelled, or sent again)."""


_INFRA_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM})
_INFRA_TEXT = ("No space left on device", "Disk quota exceeded", "Input/output error", "Read-only file system")
# Connection trouble of the libraries the farm talks through (none of them an OSError), by name so
# that this module imports none of them: httpx, kombu/amqp, redis, SQLAlchemy/psycopg.
_INFRA_CLASSES = frozenset({
    ("httpx", "TransportError"), ("kombu.exceptions", "OperationalError"), ("redis.exceptions", "ConnectionError"),
    ("redis.exceptions", "TimeoutError"), ("sqlalchemy.exc", "OperationalError"),
    ("sqlalchemy.exc", "InterfaceError"), ("psycopg", "OperationalError"), ("amqp.exceptions", "ConnectionError"),
})


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what caused it (`raise ... from`, or raised while handling), each once."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _infrastructure(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _INFRA_ERRNOS:
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    for cls in type(exc).__mro__:
        module = cls.__module__
        if any(module.startswith(m) and cls.__name__ == n for m, n in _INFRA_CLASSES):
            return True
    return False


def fault_of(exc: BaseException) -> str:
    """The real fault behind `exc`, for a job's error: the deepest infrastructure fault in its chain
    (a `ConnectError` under the upload that failed, an `ENOSPC` under a step), else `exc` itself."""
    for e in reversed(_chain(exc)):
        if _infrastructure(e):
            outer = str(exc)
            inner = f"{type(e).__name__}: {e}"
            return outer if e is exc or inner in outer else f"{outer} ({inner})"
    return str(exc) if isinstance(exc, FarmError) else f"{type(exc).__name__}: {exc}"


def classify(exc: BaseException) -> FailureKind:
    """What an exception that ended a job attempt is: the package's failure, an infrastructure fault
    (retried), or a bug in the farm (failed at once, its traceback in the job's log). Not for
    `JobStopped`, which is no failure.

    A full disk (ENOSPC, EDQUOT), an I/O error (EIO), a read-only file system and lost connections
    (the API, the broker, the database) are infrastructure wherever they occur, also under a
    `PackageFailure`: a build tool that stopped with "No space left on device" failed because of the
    worker's disk, not the package."""
    if any(_infrastructure(e) for e in _chain(exc)):
        return "infrastructure"
    if isinstance(exc, PackageFailure):
        return "infrastructure" if any(t in str(exc) for t in _INFRA_TEXT) else "package"
    if isinstance(exc, (InfrastructureFault, OSError, FarmError)):
        return "infrastructure"
    return "internal"


def internal_error(exc: BaseException) -> str:
    """The job's error for a bug in the farm."""
    return f"internal error: {type(exc).__name__}: {exc}"


# Commands --------------------------------------------------------------------------------------------


class CommandFailed(FarmError):
    """A command run on the host (`farm.util.cmd.run`) exited non-zero or timed out."""

    def __init__(self, result: Result, *, timed_out: bool = False) -> None:
        self.result = result
        self.timed_out = timed_out
        what = f"timed out after {result.seconds:.0f} s" if timed_out else f"exited with {result.returncode}"
        tail = result.output[-_TAIL:].rstrip()
        super().__init__(f"`{result.command_line}` {what}" + (f"\n{tail}" if tail else ""))


class ContainerCommandFailed(FarmError):
    """A command run in a container (`farm.containers.Container.call`) exited non-zero or timed out."""

    def __init__(self, result: ExecResult, *, timed_out: bool = False) -> None:
        self.result = result
        self.timed_out = timed_out
        what = f"timed out after {result.seconds:.0f} s" if timed_out else f"exited with {result.exit_code}"
        tail = result.output[-_TAIL:].rstrip()
        super().__init__(f"`{result.command_line}` (in container) {what}" + (f"\n{tail}" if tail else ""))


# Publishing and signing ------------------------------------------------------------------------------


class PublishError(FarmError):
    """A file cannot be published (not a wheel we can read, wrong project, bad name)."""


class FileExists(PublishError):
    """Another file is already published under this file name (or one that normalizes to it)."""


class PublishRefused(FarmError):
    """The job's wheels may not be published (another project's name or version, a file name that
    other bytes already hold). The job fails with this reason; nothing is recorded or written."""


class DigestMismatch(FarmError):
    """A copy of a published file whose bytes are not the ones the database records: never copied on."""


class SigningError(FarmError):
    """No key, an unreadable key, or a provenance object that is not what the farm writes."""


class SignatureInvalid(FarmError):
    """A signature that does not verify, or one made by another key."""


class BackupError(FarmError):
    """A backup that cannot be written, or an archive that cannot be restored (farm/backup.py)."""

    exit_code = 1


class IntakeRefused(FarmError):
    """The intake policy (farm/coordinator/intake.py) refuses a release; the message names the rule."""

    exit_code = 10


class AccessRefused(FarmError):
    """A request whose token does not admit it: `status` 401 (no valid token) or 403 (a token of another
    role or channel). farm/api/auth.py raises it; the API answers with `status`."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail
