"""Statistical evidence on seeded data: false alarms at the nominal rate, real shifts caught.

* Under no shift, the MMD test on conv-ae embeddings of real CT/MR acquisitions
  flags at most ``alpha`` of the windows (within binomial error).
* Scanner-style shifts (noise, blur, sharpening kernel, tone curve) applied to
  pydicom's real CT and MR images are detected through the whole path:
  DICOM file -> decode -> conv-ae -> MMD.
* Stratified: through the embed job and the drift job, only the shifted
  scanner (and the site and overall strata that contain it) drift.
* A population shift (prevalence and age) is detected by the drift job on the
  synthetic feed: score KS, age-band chi-squared and the BBSD embedding (KS on
  its one component).
* Our KS p-values equal scipy's; our MMD equals a naive implementation; both
  agree with alibi-detect when it is importable.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_embed import (
    REAL_IMAGES,
    Shift,
    acquisition,
    blur,
    contrast,
    noise,
    real_dataset,
    real_image_files,
    sharpen,
    spool_files,
    write_real,
)
from scipy.stats import ks_2samp

from connectors import synthetic
from detectors import KSDetector, MMDDetector
from surveillance.analysis.drift import run_drift
from surveillance.analysis.embed import run_bbsd, run_embed
from surveillance.analysis.embeddings.backbones import ConvAEBackbone, bbsd_name
from surveillance.analysis.embeddings.decode import (
    decode_for_embedding,
    square_resize,
    to_unit_grey,
)
from surveillance.analysis.embeddings.extractor import Extractor
from surveillance.core.config import DriftConfig
from surveillance.core.events import DicomMetadataEvent, PredictionEvent
from surveillance.intake.ingest import Ingestor
from surveillance.intake.pseudonym import Pseudonymizer
from surveillance.store import DriftCheck, Store
from surveillance.store.ingest_writer import device_label

START = datetime(2026, 7, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def extractor() -> Extractor:
    return Extractor(ConvAEBackbone(), device="cpu", num_workers=0)


def _embed_files(extractor: Extractor, paths: list[Path]) -> np.ndarray:
    return extractor.embed_images(np.stack([decode_for_embedding(p) for p in paths]))


# ---- false alarms under no shift -----------------------------------------------------


def test_false_alarm_rate_under_no_shift_is_at_most_alpha(extractor: Extractor) -> None:
    """200 windows of 30 vs 30 drawn from 600 unshifted acquisitions, alpha = 0.05."""
    rng = np.random.default_rng(0)
    sources = [real_dataset(name) for name in REAL_IMAGES]
    images = []
    for i in range(600):
        ds = sources[i % len(sources)]
        grey = to_unit_grey(ds, acquisition(ds.pixel_array, rng)).astype(np.float32)
        images.append(square_resize(grey, extractor.backbone.image_size))
    pool = extractor.embed_images(np.stack(images))
    alpha, trials = 0.05, 200
    p_values = []
    for trial in range(trials):
        pick = rng.choice(len(pool), 60, replace=False)
        detector = MMDDetector(alpha=alpha, n_permutations=100, seed=trial, min_samples=10)
        p_values.append(detector.fit(pool[pick[:30]]).score(pool[pick[30:]]).p_value)
    false_alarms = sum(p < alpha for p in p_values)
    # Upper 3-sigma binomial bound: 10 + 3 * sqrt(200 * 0.05 * 0.95) = 19.2
    assert false_alarms <= trials * alpha + 3 * math.sqrt(trials * alpha * (1 - alpha))
    assert false_alarms >= 1  # the test can flag at all (p-values reach below alpha)
    # and the p-values are spread over [0, 1], not piled at 1 (a test that never fires)
    assert np.mean(np.array(p_values) > 0.5) > 0.3


# ---- scanner-style shifts on real images --------------------------------------------


@pytest.mark.parametrize(
    ("shift", "image"),
    [
        pytest.param(noise, "CT_small.dcm", id="noise-ct"),
        pytest.param(blur, "CT_small.dcm", id="blur-ct"),
        pytest.param(sharpen, "CT_small.dcm", id="sharpening-kernel-ct"),
        pytest.param(contrast, "CT_small.dcm", id="contrast-curve-ct"),
        pytest.param(contrast, "MR_small.dcm", id="contrast-curve-mr"),
    ],
)
def test_scanner_style_shift_is_detected(
    shift: Shift, image: str, extractor: Extractor, tmp_path: Path
) -> None:
    """50 vs 50 acquisitions from one scanner (one real image), alpha = 0.01."""

    def embed(seed: int, with_shift: Shift | None = None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return _embed_files(extractor, real_image_files(tmp_path, 50, rng, with_shift, (image,)))

    detector = MMDDetector(alpha=0.01, n_permutations=300, seed=0, min_samples=20)
    detector.fit(embed(1))
    assert detector.score(embed(2, shift)).drifted
    assert not detector.score(embed(2)).drifted  # the same acquisitions without the shift


# ---- the embed job + drift job, stratified -------------------------------------------


def _small_feed(days: int, **changes: object) -> synthetic.SyntheticConfig:
    sites = tuple(
        dataclasses.replace(site, studies_per_day=14.0) for site in synthetic.DEFAULT_SITES
    )
    return synthetic.SyntheticConfig(days=days, seed=3, start=START, sites=sites, **changes)  # type: ignore[arg-type]


def _checks(checks: list[DriftCheck], signal: str, kind: str) -> dict[str, DriftCheck]:
    return {c.stratum_value: c for c in checks if c.signal == signal and c.stratum_kind == kind}


def test_stratified_embedding_drift_names_the_shifted_scanner(
    store: Store,
    pseudonymizer: Pseudonymizer,
    spool_dir: Path,
    extractor: Extractor,
) -> None:
    feed = _small_feed(days=14)
    changed_site, changed_station = "Northgate", "NGH-DR1"
    change_at = START + timedelta(days=7)
    for site in feed.sites:
        store.registry.set_site_label(
            pseudonymizer("institution", site.institution_name), site.name
        )
    events = list(synthetic.events(feed))
    Ingestor(store, pseudonymizer, batch_size=5000).ingest_events(events)

    station = {
        e.study_instance_uid: e.station_name for e in events if isinstance(e, DicomMetadataEvent)
    }
    predicted = {
        e.study_instance_uid: e.predicted_at for e in events if isinstance(e, PredictionEvent)
    }
    rng = np.random.default_rng(5)
    # Each room acquires one kind of image: rooms alternate between the real CT and MR.
    sources = [real_dataset(name) for name in REAL_IMAGES]
    rooms = sorted({s for s in station.values() if s})
    source_of = {room: sources[i % len(sources)] for i, room in enumerate(rooms)}
    files = []
    for uid in sorted(predicted):
        source = source_of[station[uid] or rooms[0]]
        image = acquisition(source.pixel_array, rng)
        if station[uid] == changed_station and predicted[uid] >= change_at:
            image = sharpen(image, source.pixel_array)  # a new reconstruction kernel
        path = write_real(spool_dir / f"{uuid.uuid4().hex}.dcm", source, image)
        files.append((pseudonymizer("study", uid), path))
    spool_files(store, files)

    report = run_embed(store, extractor, spool_dir)
    assert report.embeddings_new == len(predicted) and report.failed == 0

    (model,) = store.registry.models()
    config = DriftConfig(alpha=0.01, window_days=7, reference_days=7, min_samples=20)
    checks = run_drift(store, model, config, as_of=START + timedelta(days=14))
    scanners = _checks(checks, "embedding:conv-ae", "scanner")
    scanner = next(
        s for site in feed.sites for s in site.scanners if s.station_name == changed_station
    )
    changed = device_label(
        scanner.manufacturer,
        scanner.manufacturer_model_name,
        pseudonymizer("station", changed_station),
        changed_site,
    )
    pca = _checks(checks, "embedding-pca:conv-ae", "scanner")
    assert len(scanners) == 6 and len(pca) == 6
    # the MMD over several bandwidths and the KS on principal components both
    # see it, after the window's correction over every stratum and signal
    assert scanners[changed].status == "drift"
    assert pca[changed].status == "drift"
    assert scanners[changed].details["extractor_version"] == "1.s0.r128"
    assert scanners[changed].effect_name == "mmd_norm" and pca[changed].effect_name == "ks_d"
    assert scanners[changed].p_adjusted is not None
    assert scanners[changed].p_adjusted >= (scanners[changed].p_value or 0.0)
    quiet = {label: c.status for label, c in (scanners | pca).items() if label != changed}
    quiet.update({f"pca {label}": c.status for label, c in pca.items() if label != changed})
    assert set(quiet.values()) == {"ok"}, quiet
    # Pooled over the site (the shifted CT room beside an MR room) the shift is
    # diluted below significance here: the reason the checks are stratified.
    sites = _checks(checks, "embedding:conv-ae", "site")
    assert {sites[s].status for s in sites if s != changed_site} == {"ok"}
    # the existing signals are still there
    assert _checks(checks, "score:pneumothorax", "overall")


def test_population_shift_is_detected_by_the_drift_job(
    store: Store,
    pseudonymizer: Pseudonymizer,
) -> None:
    change = synthetic.PopulationChange(at_day=14, prevalence=0.45, age_shift=-25.0)
    feed = _small_feed(days=21, population_changes=(change,))
    Ingestor(store, pseudonymizer, batch_size=5000).ingest_events(synthetic.events(feed))
    (model,) = store.registry.models()
    assert run_bbsd(store, [model]) > 0
    config = DriftConfig(alpha=0.01, window_days=7, reference_days=14, min_samples=30)
    checks = run_drift(store, model, config, as_of=START + timedelta(days=21))

    def overall(signal: str) -> str:
        return _checks(checks, signal, "overall")["all"].status

    assert overall("score:pneumothorax") == "drift"  # prevalence moves the scores
    # BBSD of a one-finding model is 1-D: tested by KS (an MMD would repeat it)
    assert overall(f"embedding-pca:{bbsd_name(model.name)}") == "drift"
    assert not _checks(checks, f"embedding:{bbsd_name(model.name)}", "overall")
    assert overall("metadata:age_band") == "drift"
    assert overall("metadata:sex") == "ok"  # unchanged


def test_too_few_embeddings_is_insufficient_data_not_drift(
    store: Store,
    pseudonymizer: Pseudonymizer,
) -> None:
    feed = _small_feed(days=14)
    Ingestor(store, pseudonymizer, batch_size=5000).ingest_events(synthetic.events(feed))
    (model,) = store.registry.models()
    run_bbsd(store, [model])
    config = DriftConfig(alpha=0.01, window_days=7, reference_days=7, min_samples=60)
    checks = run_drift(store, model, config, as_of=START + timedelta(days=14))
    scanners = _checks(checks, f"embedding-pca:{bbsd_name(model.name)}", "scanner")
    assert scanners and {c.status for c in scanners.values()} == {"insufficient_data"}
    assert all(c.p_value is None and c.detector == "ks-pca" for c in scanners.values())


# ---- agreement with reference implementations ----------------------------------------


def test_ks_p_values_equal_scipy() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(80, 3))
    y = rng.normal(size=(70, 3)) + np.array([0.0, 0.2, 0.6])
    result = KSDetector(alpha=0.05, correction="bonferroni", min_samples=10).fit(x).score(y)
    raw = [ks_2samp(x[:, j], y[:, j]).pvalue for j in range(3)]
    assert result.p_value == pytest.approx(min(1.0, 3 * min(raw)), rel=1e-12)
    one = KSDetector(alpha=0.05, min_samples=10).fit(x[:, 0]).score(y[:, 0])
    assert one.p_value == pytest.approx(raw[0], rel=1e-12)
    assert one.statistic == pytest.approx(ks_2samp(x[:, 0], y[:, 0]).statistic, rel=1e-12)


def _naive_mmd(x: np.ndarray, y: np.ndarray, seed: int, permutations: int) -> tuple[float, float]:
    """Biased MMD² with the median-heuristic Gaussian kernel, by the textbook formula,
    and the permutation p-value over the detector's documented permutation stream."""
    z = np.vstack([x, y]).astype(np.float64)
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    iu = np.triu_indices(len(z), 1)
    sigma = float(np.sort(np.sqrt(d2[iu]))[(len(iu[0]) - 1) // 2])
    k = np.exp(-d2 / (2 * sigma**2))
    n = len(x)

    def stat(labels: np.ndarray) -> float:
        a, b = labels[:n], labels[n:]
        return float(k[np.ix_(a, a)].mean() + k[np.ix_(b, b)].mean() - 2 * k[np.ix_(a, b)].mean())

    observed = stat(np.arange(len(z)))
    # Permutation b gives pooled row i the label of row perm[i] (the documented stream).
    g = torch.Generator().manual_seed(seed * 1_000_003 + 3)
    exceed = 0
    for _ in range(permutations):
        perm = torch.randperm(len(z), generator=g).numpy()
        relabelled = np.concatenate([np.flatnonzero(perm < n), np.flatnonzero(perm >= n)])
        exceed += stat(relabelled) >= observed
    return observed, (exceed + 1) / (permutations + 1)


def test_mmd_equals_a_naive_implementation() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(40, 5))
    y = rng.normal(size=(35, 5)) + 0.3
    result = (
        MMDDetector(n_permutations=200, seed=3, min_samples=10, dtype=torch.float64).fit(x).score(y)
    )
    statistic, p_value = _naive_mmd(x, y, seed=3, permutations=200)
    assert result.statistic == pytest.approx(statistic, rel=1e-9)
    assert result.p_value == pytest.approx(p_value, abs=1e-12)


def test_mmd_and_ks_agree_with_alibi_detect() -> None:
    alibi_cd = pytest.importorskip(
        "alibi_detect.cd", reason="alibi-detect is optional (BSL licence, numpy<2)"
    )
    from alibi_detect.utils.pytorch.kernels import GaussianRBF

    rng = np.random.default_rng(8)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    for shift, drifted in ((0.0, False), (0.4, True)):
        y = (rng.normal(size=(200, 8)) + shift).astype(np.float32)
        ours = MMDDetector(n_permutations=1000, seed=0, min_samples=10).fit(x).score(y)
        sigma = torch.tensor([ours.details["bandwidth"]], dtype=torch.float32)
        theirs = alibi_cd.MMDDrift(
            x,
            backend="pytorch",
            p_val=0.05,
            n_permutations=1000,
            kernel=GaussianRBF(sigma=sigma),
            configure_kernel_from_x_ref=False,
            device="cpu",
        ).predict(y)["data"]
        assert abs(ours.p_value - theirs["p_val"]) < 0.1
        assert (ours.p_value < 0.05) == drifted == bool(theirs["is_drift"])
        ks = KSDetector(alpha=0.05, correction="bonferroni", min_samples=10).fit(x).score(y)
        their_ks = alibi_cd.KSDrift(x, p_val=0.05, correction="bonferroni").predict(
            y, return_p_val=True
        )["data"]
        assert ks.p_value == pytest.approx(min(1.0, 8 * float(np.min(their_ks["p_val"]))), abs=0.02)


def test_alibi_backend_stays_off_the_default_path() -> None:
    """Default imports never load alibi; the optional backend registers its keys."""
    probe = textwrap.dedent(
        """
        import importlib.util, sys
        import detectors, surveillance.analysis.drift, surveillance.analysis.embed, surveillance.cli
        assert "detectors.alibi_backend" not in sys.modules
        assert "alibi_detect" not in sys.modules
        import detectors.alibi_backend
        assert {"mmd-alibi", "ks-alibi"} <= set(detectors.Detector.registry)
        if importlib.util.find_spec("alibi_detect") is None:
            try:
                detectors.get_detector("mmd-alibi")()
            except ImportError as exc:
                assert "pip install" in str(exc)
            else:
                raise AssertionError("expected ImportError without alibi-detect")
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
