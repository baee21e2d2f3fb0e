"""One base class for every error the farm reports to a person, one subclass per concept.

`FarmError` messages are meant to be printed as they are: they say what was wrong and where.
`PackageFailure` is the package's fault (it does not build, its tests fail) and is never retried;
`InfrastructureFault` is ours (a worker died, the network, the disk) and is retried.
"""

from __future__ import annotations


class FarmError(Exception):
    """An error with a message for a person. `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(FarmError):
    exit_code = 2


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


class UpstreamError(FarmError):
    """The upstream index does not have what was asked for, or its file does not match its record."""

    exit_code = 5


class StateError(FarmError):
    """An illegal job state transition."""

    exit_code = 6


class NotFound(FarmError):
    exit_code = 7


class PackageFailure(FarmError):
    """The package failed (build error, repair impossible, tests failed). Recorded, not retried."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        super().__init__(f"{step}: {message}")


class InfrastructureFault(FarmError):
    """Something of ours failed (tool missing, disk, network to the farm). Retried."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        super().__init__(f"{step}: {message}")


class CommandTimeout(PackageFailure):
    pass
