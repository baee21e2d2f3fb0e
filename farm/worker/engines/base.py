"""What a build engine provides: turn an sdist into wheel(s) for one build identifier."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from farm.config import Settings
from farm.messages import JobSpec
from farm.recipes.schema import Options
from farm.util.cmd import Result
from farm.worker.platforms.base import Platform
from farm.worker.sandbox import Limits, Sandbox
from farm.worker.source import SdistSource


@dataclass(kw_only=True)
class BuildContext:
    spec: JobSpec
    options: Options
    platform: Platform
    settings: Settings
    src: SdistSource  # the verified sdist file and its tree (unpacked on first use of `source`)
    work: Path  # the job's private folder; nothing is written outside it
    log: TextIO
    sandbox: Sandbox  # where package code runs (Platform.sandbox)
    limits: Limits  # its resource limits (settings, raised or lowered by the recipe)
    commands: list[str] = field(default_factory=list)  # every command line run, for provenance

    @property
    def sdist(self) -> Path:
        return self.src.sdist

    @property
    def source(self) -> Path:
        """The unpacked tree (unpacked now if it was not yet)."""
        return self.src.path

    def record(self, result: Result) -> Result:
        self.commands.append(result.command_line)
        return result


@dataclass(kw_only=True)
class BuildOutput:
    wheels: list[Path]
    repaired: bool  # True when the engine already repaired them (cibuildwheel)
    tools: dict[str, str] = field(default_factory=dict)  # tool -> version, for provenance
    image_digest: str | None = None
    effective_build_requires: list[str] | None = None
    build_environment: list[str] | None = None  # what the build environment held, `name==version`
    isolation: dict[str, object] = field(default_factory=dict)  # what package code ran in, for provenance
    # what the farm changed to make the build work (build requirements as of the release, system
    # packages it found): recorded in the provenance's internalParameters
    adjustments: dict[str, object] = field(default_factory=dict)


class Engine(Protocol):
    name: str

    def build(self, ctx: BuildContext) -> BuildOutput:
        """Build (and, if the engine does so itself, repair) the wheel(s). PackageFailure on a build error."""
