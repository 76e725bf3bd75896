"""Detection evidence at deployment scale (issue 9): 1M predictions, 300 scanners.

One synthetic deployment (COPY, :meth:`store.bench.build_synthetic`): 50 sites,
300 scanners, 120 days, one finding, measured kVp with 8 kV spread. From five
weeks before the end a small, clinically irrelevant change is injected: 3 % of
studies move into the 70-79 age band and every kVp reads 1 kV higher. At this
volume (~58,000 studies a week overall) both are highly significant; neither
reaches its tolerance (``[drift.min_effect]``), so they must be shown as
``below_tolerance`` and open no incident. The weeks before the change are the
null: no incident, and flags at no more than the configured level.

Slow (building 1M rows and judging 13 weeks x ~350 strata takes minutes):
``@pytest.mark.slow``; PostgreSQL only (the COPY build needs it).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from surveillance.analysis.drift import run_drift
from surveillance.core.config import Settings
from surveillance.incidents.policy import apply_policy
from surveillance.store import Store

END = datetime(2026, 6, 1, tzinfo=UTC)
SHIFT_FROM = END - timedelta(days=36)  # the start of a drift window
MODEL = "cxr-pneumothorax"


@pytest.mark.slow
def test_one_million_predictions_small_shift_is_below_tolerance_and_opens_nothing(
    pg_store: Store, settings: Settings
) -> None:
    store = pg_store
    model = store.registry.model(MODEL)
    built = store.bench.build_synthetic(
        model_id=model.id,
        model_version=model.version,
        findings=sorted(model.findings),
        predictions=1_000_000,
        scanners=300,
        sites=50,
        days=120,
        end=END,
        tag="evidence",
        kvp_sd=8.0,
        shift_from=SHIFT_FROM,
        age_band_shift=0.03,
        kvp_shift=1.0,
    )
    assert built.predictions == 1_000_000
    config = settings.drift
    checks = run_drift(store, model, config, as_of=END)
    outcome = apply_policy(store, model, checks, [], config, now=END)

    # 0 incidents: neither the null weeks nor the small change open anything
    assert outcome.opened == () and store.incidents.find() == []

    before = [c for c in checks if c.window_end <= SHIFT_FROM]
    after = [c for c in checks if c.window_start >= SHIFT_FROM]
    assert len({c.window_start for c in before}) >= 8 and len({c.window_start for c in after}) == 5
    statuses_before = Counter(c.status for c in before)
    statuses_after = Counter(c.status for c in after)
    decided_before = sum(n for s, n in statuses_before.items() if s != "insufficient_data")
    print(f"\nbefore the change: {dict(statuses_before)}; after: {dict(statuses_after)}")
    # the null: flags (drift or below tolerance) at most at the test level
    flagged_before = statuses_before["drift"] + statuses_before["below_tolerance"]
    assert flagged_before <= config.alpha * decided_before

    # the small change: significant in every week after it, at the overall
    # stratum, and below its tolerance each time
    for signal in ("metadata:age_band", "acquisition"):
        overall = [c for c in after if c.signal == signal and c.stratum_kind == "overall"]
        assert len(overall) == 5
        for check in overall:
            assert check.status == "below_tolerance", (signal, check.window_start, check)
            assert check.p_adjusted is not None and check.p_adjusted < config.alpha
            assert check.effect_size is not None and check.min_effect is not None
            assert check.effect_size < check.min_effect
    # nothing after the change reaches drift beyond what the null weeks show
    assert statuses_after["drift"] <= config.alpha * sum(statuses_after.values())
