"""Run drift and performance checks for one or all models, then the policy.

Each job run is recorded by (job id, scheduled time) before it starts, so the
scheduler (and a person running ``surveillance check``) can never run the same
window twice; a run that raises is recorded as failed with its error. Each job
is incremental: it judges only the windows that need it (new windows, windows
whose labels changed, all of them after a new reference), or all with ``full``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TypeVar

from surveillance.analysis.drift import DriftTally, run_drift
from surveillance.analysis.performance import run_performance
from surveillance.core.config import Settings
from surveillance.incidents.policy import PolicyOutcome, apply_policy
from surveillance.store import DriftCheck, ModelInfo, PerformanceCheck, Store

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ModelCheckResult:
    """One model's check run.

    ``drift`` holds the drift checks of this run that are not ``ok`` (drift,
    below tolerance, undecided); ``drift_tally`` counts all of them. Read the
    whole series from the store (``store.checks.drift``). ``performance`` holds
    every labelled performance check of the run (a few per window and stratum).
    """

    model: ModelInfo
    drift: tuple[DriftCheck, ...]
    performance: tuple[PerformanceCheck, ...]
    policy: PolicyOutcome
    drift_tally: DriftTally = field(default_factory=DriftTally)
    #: wall seconds of the model's jobs and policy (what the daemon pays: no imports)
    seconds: float = 0.0

    @property
    def windows_judged(self) -> dict[str, int]:
        """Windows judged by this run per job (0 and 0: nothing needed judging)."""
        return {
            "drift": len(self.drift_tally.windows),
            "performance": len({(c.window_start, c.window_end) for c in self.performance}),
        }


def release_memory() -> None:
    """Give the memory a job freed back to the operating system.

    A drift run and a performance run each peak at a few hundred MB at 1M
    predictions and free it when they end; glibc keeps freed arenas mapped, so
    without a trim the second job's peak lands on top of the first one's and the
    daemon's resident size only ever grows. No-op where there is no glibc.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _recorded(
    store: Store, job_id: str, as_of: datetime, work: Callable[[int], list[T]]
) -> tuple[T, ...]:
    run_id = store.ledger.claim(job_id, as_of)
    if run_id is None:
        return ()  # already ran for this scheduled time
    try:
        result = work(run_id)
    except Exception as exc:
        store.ledger.finish(run_id, error=f"{type(exc).__name__}: {exc}")
        raise
    store.ledger.finish(run_id)
    release_memory()
    return tuple(result)


def _drift_job(
    store: Store,
    model: ModelInfo,
    settings: Settings,
    as_of: datetime,
    full: bool,
    tally: DriftTally,
    run_id: int,
) -> list[DriftCheck]:
    return run_drift(
        store, model, settings.drift, as_of=as_of, job_run_id=run_id, full=full, tally=tally
    )


def _performance_job(
    store: Store, model: ModelInfo, settings: Settings, as_of: datetime, full: bool, run_id: int
) -> list[PerformanceCheck]:
    return run_performance(
        store, model, settings.performance, as_of=as_of, job_run_id=run_id, full=full
    )


def run_checks(
    store: Store,
    settings: Settings,
    *,
    as_of: datetime,
    model_name: str | None = None,
    progress: Callable[[str], None] | None = None,
    full: bool = False,
) -> list[ModelCheckResult]:
    """Judge the windows that need it (all of them with ``full``), then apply the policy."""
    models = [store.registry.model(model_name)] if model_name else store.registry.models()
    results = []
    for model in models:
        started = time.perf_counter()
        if progress:
            progress(f"drift checks for {model.name}")
        tally = DriftTally()  # every check counted; only those not ok kept
        drift = _recorded(
            store,
            f"drift:{model.name}",
            as_of,
            partial(_drift_job, store, model, settings, as_of, full, tally),
        )
        if progress:
            progress(f"performance checks for {model.name}")
        performance = _recorded(
            store,
            f"performance:{model.name}",
            as_of,
            partial(_performance_job, store, model, settings, as_of, full),
        )
        # the policy reads the flagged series from the store; ok checks add nothing to it
        outcome = apply_policy(store, model, drift, performance, settings.drift, now=as_of)
        seconds = time.perf_counter() - started
        results.append(ModelCheckResult(model, drift, performance, outcome, tally, seconds))
    return results


__all__ = ["DriftTally", "ModelCheckResult", "release_memory", "run_checks"]
