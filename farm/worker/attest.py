"""Step attest: one provenance statement per verified wheel (farm.provenance.statement).

The build's part comes from the `BuildRecord` (this attempt's build, or the staged build of a job
verified again after waiting for its dependencies), the verification's part from this attempt.
The worker does not sign: it stores the statement beside the wheel, the coordinator signs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from farm.messages import BuildRecord, JobSpec
from farm.provenance.statement import statement
from farm.worker.verify import VerifyOutcome


def attest(spec: JobSpec, wheels: list[Path], outcomes: list[VerifyOutcome], build: BuildRecord, *,
           timings: dict[str, float], started: float, finished: float, worker: str) -> list[dict[str, Any]]:
    """The statements of `wheels` (verified as `outcomes`); `timings` and `started` are this attempt's."""
    return [statement(spec=spec, wheel=w, tools=build.tools, commands=[*build.commands, *v.commands],
                      timings={**build.timings, **timings},
                      started=build.started if build.started is not None else started, finished=finished,
                      verification=v.record(), image_digest=build.image_digest, build_requires=build.build_requires,
                      build_environment=build.build_environment,
                      isolation=build.isolation, adjustments=build.adjustments, worker=worker)
            for w, v in zip(wheels, outcomes, strict=True)]
