"""A seeded, synthetic deployment of a chest X-ray pneumothorax detector.

This is the embedded default feed of ``surveillance demo`` and the test-bed of the
drift and performance jobs. It emits exactly the events the real connectors emit
(:class:`~surveillance.core.events.DicomMetadataEvent`,
:class:`~surveillance.core.events.PredictionEvent`,
:class:`~surveillance.core.events.DiagnosisEvent`), each of which round-trips through the
JSONL/Kafka record format of :mod:`connectors.records`.

The simulated world
-------------------
* **Sites and scanners.** :data:`DEFAULT_SITES` holds three hospitals with two
  digital radiography rooms each, from six vendors (GE, Siemens, Philips,
  Carestream, Fujifilm, Agfa). A site performs ``Poisson(studies_per_day x f)``
  chest X-rays a day, ``f`` = 1 on weekdays and :data:`WEEKEND_FACTOR` on
  Saturdays and Sundays; a study goes to one of the site's active scanners in
  proportion to ``Scanner.share``. 80 % of studies fall in the 07:00-19:00
  working day, the rest anywhere in the 24 h (UTC).
* **Patients.** 20 % of studies are a returning patient of the same site (same
  PatientID, sex and age); new patients are 52 % male, aged
  ``N(58, 18)`` years clipped to 18..100 (an adult chest X-ray population), and
  reported as a decade age band (:func:`connectors.dicom_header.age_band`).
  Identifiers are synthetic: PatientID ``<SITE-CODE><7 digits>``, AccessionNumber
  ``A<site #><9 digits>`` and StudyInstanceUID ``2.25.<128-bit int>`` drawn from
  the seeded generator (valid UIDs, unique with overwhelming probability).
* **Disease.** Each finding is present independently with probability
  ``SyntheticConfig.prevalence`` (default 0.12), or the prevalence set by the
  latest :class:`PopulationChange` of the site.
* **The model** (binormal, unequal variances: the classic ROC model). For each
  finding the model's logit is::

      logit = MU_NEG + q + shift_neg + k * SIGMA_NEG * z     (finding absent)
      logit = MU_POS + q + shift_pos + k * SIGMA_POS * z     (finding present)
      score = sigmoid(logit),  z ~ N(0, 1)

  with ``q`` the scanner's ``quality`` bias, and ``shift_pos`` (``score_shift``),
  ``shift_neg`` (``negative_score_shift``) and ``k`` (``noise_scale``) the
  accumulated effects of the :class:`ScannerChange` s in force (0, 0, 1 without
  one). The operating threshold is 0.5 (logit 0). The parameters
  ``MU_NEG = -1.2816``, ``SIGMA_NEG = 1.0``, ``MU_POS = 2.5631``, ``SIGMA_POS = 2.0``
  put both sensitivity and specificity at 0.90 on a scanner with ``q = 0``
  (``Phi(1.2816) = 0.90``) and give an AUROC of
  ``Phi((MU_POS - MU_NEG) / sqrt(SIGMA_NEG^2 + SIGMA_POS^2)) = Phi(1.72) = 0.957``;
  the wider spread of positives stands for lesion size (small apical
  pneumothoraces are the ones missed). The default scanner biases are within
  +-0.1 logit, so every scanner's sensitivity and specificity lie within 0.88..0.92
  before any change; pooled, sensitivity and specificity are 0.90 and the AUROC
  0.957 (:func:`ground_truth` computes these exactly for any configuration).
* **Scanner changes.** A :class:`ScannerChange` of kind ``"software-update"``
  changes one station's SoftwareVersions (and optionally its KVP, convolution
  kernel and pixel spacing) from ``at_day`` on, and changes the model's logits
  for its studies as above. The default change (day ``2/3 x days``, GE room
  ``NGH-DR1`` at Northgate) is a new image-processing release with a 5 kV lower
  protocol: :func:`change_effect` solves for ``score_shift = -1.53``,
  ``negative_score_shift = -0.49`` and ``noise_scale = 1.4`` so that the room's
  sensitivity falls from 0.90 to 0.65 while its specificity stays at 0.89
  (unchanged), and the whole score distribution of the room moves (the median
  negative score drops from 0.23 to 0.15) - visible to a drift detector long
  before labels arrive. Kind ``"new-scanner"`` installs the ``scanner`` given
  with the change as a new station of the site from ``at_day`` on (it takes its
  ``share`` of the site's volume; the change's effects apply to all its studies).
* **Population changes.** A :class:`PopulationChange` sets a new prevalence and/or
  shifts the age of new patients at one site (or every site) from ``at_day`` on.
* **Labels.** A fraction ``label_fraction`` (0.85) of studies ever gets a
  confirmed label: one :class:`~surveillance.core.events.DiagnosisEvent` per finding,
  confirmed ``Uniform(label_delay_days)`` days (default 2..21) after the study,
  from a source drawn from ``diagnosis_sources`` (report 60 %, consensus 20 %,
  follow-up 15 %, pathology 5 %). Labels confirmed at or after the end of the
  simulated period (``start + days``) are not emitted: they have not arrived yet.
  With the defaults, only about 60 % of the labels of the last 30 days have
  arrived by the end, which is what a real performance monitor sees.

Event stream
------------
For every study the header reaches the surveillance daemon ``1 + LogNormal``
minutes after acquisition (median ~2 min) and the prediction ``LogNormal``
minutes after acquisition (median ~4 min, ``predicted_at``), both capped at 30
minutes, so a prediction sometimes arrives before its header. :func:`events`
yields all events sorted by that arrival time (``confirmed_at`` for diagnoses);
studies belong to the period ``[start, start + days)`` although the last
prediction may arrive a few minutes after it. Positions are
``SourcePosition("synthetic", "synthetic-feed", offset=i)``; message ids are
``pred-<n>`` and ``dx-<n>``, numbered in stream order. The same configuration
(seed included) always gives the identical stream; all randomness comes from one
``numpy.random.Generator(PCG64(seed))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal, NoReturn

import numpy as np
import numpy.typing as npt

from connectors.dicom_header import age_band
from connectors.records import event_to_jsonl
from surveillance.core.errors import ConfigError
from surveillance.core.events import (
    DIAGNOSIS_SOURCES,
    DiagnosisEvent,
    DicomMetadataEvent,
    Event,
    PredictionEvent,
    SourcePosition,
)

# --------------------------------------------------------------------------- model
TARGET_SENSITIVITY = 0.90
TARGET_SPECIFICITY = 0.90
THRESHOLD = 0.5  # operating threshold on the score (logit 0)
_Z90 = NormalDist().inv_cdf(0.90)  # 1.2816
SIGMA_NEG = 1.0
SIGMA_POS = 2.0
MU_NEG = round(-_Z90 * SIGMA_NEG, 4)  # -1.2816: specificity 0.90 at q = 0
MU_POS = round(_Z90 * SIGMA_POS, 4)  # 2.5631: sensitivity 0.90 at q = 0

# ---------------------------------------------------------------- world constants
WEEKEND_FACTOR = 0.55  # weekend volume relative to a weekday
DAYTIME_FRACTION = 0.80  # share of studies acquired 07:00-19:00
RETURNING_PATIENT_FRACTION = 0.20
MALE_FRACTION = 0.52
AGE_MEAN, AGE_SD, AGE_MIN, AGE_MAX = 58.0, 18.0, 18, 100
MAX_LAG_MINUTES = 30.0
SOURCE = "synthetic"
LOCATOR = "synthetic-feed"

ChangeKind = Literal["software-update", "new-scanner"]


# ------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class Scanner:
    """One X-ray room (a DICOM station) and what its headers say.

    ``view_positions`` is the mix of ViewPosition values as ``(value, weight)``
    pairs; ``quality`` is the scanner's logit bias on the model (both classes);
    ``share`` its relative share of the site's volume.
    """

    site: str
    institution_name: str
    station_name: str
    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    kvp: float
    pixel_spacing: float
    view_positions: tuple[tuple[str, float], ...] = (("PA", 0.72), ("AP", 0.28))
    quality: float = 0.0
    convolution_kernel: str | None = None
    share: float = 1.0


@dataclass(frozen=True)
class Site:
    """A hospital: its name, DICOM InstitutionName, mean daily volume and rooms."""

    name: str
    institution_name: str
    studies_per_day: float
    scanners: tuple[Scanner, ...]


@dataclass(frozen=True)
class ScannerChange:
    """Something that changes at one station from ``at_day`` (0-based) on.

    ``kind="software-update"``: the station ``station`` of ``site`` gets
    ``software_versions`` (if given), its KVP moves by ``kvp_shift``, and its
    ConvolutionKernel / PixelSpacing become the given values (if given).
    ``kind="new-scanner"``: ``scanner`` (whose ``station_name`` must equal
    ``station``) is installed at ``site``; its own fields describe it.

    Model effect on the station's studies (both kinds, cumulative over changes):
    ``score_shift`` is added to the logit of studies with the finding present
    (negative: sensitivity falls), ``negative_score_shift`` to studies without
    it, and the logit noise is multiplied by ``noise_scale``.
    """

    at_day: int
    site: str
    station: str
    software_versions: str | None = None
    score_shift: float = 0.0
    negative_score_shift: float = 0.0
    noise_scale: float = 1.0
    kvp_shift: float = 0.0
    convolution_kernel: str | None = None
    pixel_spacing: float | None = None
    kind: ChangeKind = "software-update"
    scanner: Scanner | None = None


@dataclass(frozen=True)
class PopulationChange:
    """From ``at_day`` on, at ``site`` (``None``: every site), a new ``prevalence``
    (if given) and new patients ``age_shift`` years older (negative: younger)."""

    at_day: int
    site: str | None = None
    prevalence: float | None = None
    age_shift: float = 0.0


def _scanner(
    site: Site | tuple[str, str],
    station: str,
    manufacturer: str,
    model: str,
    software: str,
    kvp: float,
    spacing: float,
    quality: float,
) -> Scanner:
    name, institution = site if isinstance(site, tuple) else (site.name, site.institution_name)
    return Scanner(
        site=name,
        institution_name=institution,
        station_name=station,
        manufacturer=manufacturer,
        manufacturer_model_name=model,
        software_versions=software,
        kvp=kvp,
        pixel_spacing=spacing,
        quality=quality,
    )


_NORTH = ("Northgate", "Northgate General Hospital")
_RIVER = ("Riverside", "Riverside University Medical Center")
_LAKE = ("Lakeshore", "Lakeshore Community Hospital")

DEFAULT_SITES: tuple[Site, ...] = (
    Site(
        name=_NORTH[0],
        institution_name=_NORTH[1],
        studies_per_day=32.0,
        scanners=(
            _scanner(
                _NORTH,
                "NGH-DR1",
                "GE MEDICAL SYSTEMS",
                "Discovery XR656",
                "dm_Platform_release_FW31.1-4",
                120.0,
                0.2,
                0.05,
            ),
            _scanner(_NORTH, "NGH-DR2", "SIEMENS", "Ysio Max", "VF11A", 125.0, 0.148, -0.05),
        ),
    ),
    Site(
        name=_RIVER[0],
        institution_name=_RIVER[1],
        studies_per_day=28.0,
        scanners=(
            _scanner(
                _RIVER,
                "RUMC-DD1",
                "Philips Medical Systems",
                "DigitalDiagnost",
                "4.3.3",
                125.0,
                0.148,
                0.1,
            ),
            _scanner(
                _RIVER,
                "RUMC-DRX",
                "Carestream Health",
                "DRX-Evolution",
                "5.7.412.0",
                120.0,
                0.139,
                -0.05,
            ),
        ),
    ),
    Site(
        name=_LAKE[0],
        institution_name=_LAKE[1],
        studies_per_day=26.0,
        scanners=(
            _scanner(
                _LAKE, "LCH-FDR", "FUJIFILM Corporation", "FDR D-EVO II", "V10.1", 115.0, 0.15, 0.0
            ),
            _scanner(_LAKE, "LCH-DXD", "Agfa", "DX-D 600", "MUSICA 3 5.1.2", 120.0, 0.148, -0.1),
        ),
    ),
)

DEFAULT_DIAGNOSIS_SOURCES: tuple[tuple[str, float], ...] = (
    ("report", 0.60),
    ("consensus", 0.20),
    ("follow-up", 0.15),
    ("pathology", 0.05),
)


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that defines one simulated deployment (see the module docstring).

    ``label_delay_days`` is the (min, max) of the uniform delay between a study
    and its confirmed label; ``diagnosis_sources`` the ``(source, weight)`` mix;
    ``logit_negative`` / ``logit_positive`` the ``(mean, sd)`` of the model's logit
    without / with the finding on a scanner with ``quality = 0``.
    """

    start: datetime = datetime(2026, 7, 1, tzinfo=UTC)
    days: int = 90
    seed: int = 7
    model: str = "cxr-pneumothorax"
    model_version: str = "2.1.0"
    findings: tuple[str, ...] = ("pneumothorax",)
    prevalence: float = 0.12
    label_delay_days: tuple[float, float] = (2.0, 21.0)
    label_fraction: float = 0.85
    diagnosis_sources: tuple[tuple[str, float], ...] = DEFAULT_DIAGNOSIS_SOURCES
    sites: tuple[Site, ...] = DEFAULT_SITES
    changes: tuple[ScannerChange, ...] = ()
    population_changes: tuple[PopulationChange, ...] = ()
    logit_negative: tuple[float, float] = (MU_NEG, SIGMA_NEG)
    logit_positive: tuple[float, float] = (MU_POS, SIGMA_POS)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def end(self) -> datetime:
        """The end of the simulated period (exclusive)."""
        return self.start + timedelta(days=self.days)


def _validate(config: SyntheticConfig) -> None:
    def fail(message: str) -> NoReturn:
        raise ConfigError(f"synthetic feed: {message}")

    if config.start.tzinfo is None or config.start.utcoffset() is None:
        fail("start must be a time-zone-aware datetime (e.g. 2026-07-01T00:00Z)")
    if not isinstance(config.days, int) or config.days < 1:
        fail(f"days must be a positive whole number, got {config.days!r}")
    if not config.findings or len(set(config.findings)) != len(config.findings):
        fail("findings must be a non-empty tuple of distinct names")
    if not 0.0 < config.prevalence < 1.0:
        fail(f"prevalence must lie strictly between 0 and 1, got {config.prevalence}")
    low, high = config.label_delay_days
    if not 0.0 <= low <= high:
        fail(f"label_delay_days must be (min, max) with 0 <= min <= max, got {(low, high)}")
    if not 0.0 <= config.label_fraction <= 1.0:
        fail(f"label_fraction must lie in 0..1, got {config.label_fraction}")
    if not config.diagnosis_sources or sum(w for _, w in config.diagnosis_sources) <= 0:
        fail("diagnosis_sources must hold at least one (source, weight) with weight > 0")
    for source, weight in config.diagnosis_sources:
        if source not in DIAGNOSIS_SOURCES or weight < 0:
            fail(
                f"diagnosis source {source!r} (weight {weight}) is not one of "
                f"{DIAGNOSIS_SOURCES} with a weight >= 0"
            )
    for label, (_, sd) in (
        ("logit_negative", config.logit_negative),
        ("logit_positive", config.logit_positive),
    ):
        if sd <= 0:
            fail(f"{label} standard deviation must be > 0")
    if not config.sites:
        fail("at least one site is needed")
    stations: dict[str, set[str]] = {}
    for site in config.sites:
        if site.name in stations:
            fail(f"site name {site.name!r} appears twice")
        if site.studies_per_day < 0 or not site.scanners:
            fail(f"site {site.name!r} needs studies_per_day >= 0 and at least one scanner")
        names = {s.station_name for s in site.scanners}
        if len(names) != len(site.scanners):
            fail(f"site {site.name!r} has two scanners with the same station name")
        for scanner in site.scanners:
            _validate_scanner(scanner, site, fail)
        stations[site.name] = names
    for change in sorted(config.changes, key=lambda c: c.at_day):
        if change.site not in stations:
            fail(f"change at day {change.at_day}: unknown site {change.site!r}")
        if change.at_day < 0:
            fail(f"change at day {change.at_day}: at_day must be >= 0")
        if change.noise_scale <= 0:
            fail(f"change at day {change.at_day}: noise_scale must be > 0")
        if change.kind == "new-scanner":
            if change.scanner is None or change.scanner.station_name != change.station:
                fail(
                    f"new-scanner change at day {change.at_day} needs scanner= with "
                    f"station_name {change.station!r}"
                )
            if change.station in stations[change.site]:
                fail(f"new-scanner change: station {change.station!r} already exists")
            site = next(s for s in config.sites if s.name == change.site)
            _validate_scanner(change.scanner, site, fail)
            stations[change.site].add(change.station)
        elif change.kind == "software-update":
            if change.station not in stations[change.site]:
                fail(
                    f"change at day {change.at_day}: site {change.site!r} has no station "
                    f"{change.station!r} (known: {sorted(stations[change.site])})"
                )
        else:
            fail(f"change kind {change.kind!r} must be 'software-update' or 'new-scanner'")
    for pop in config.population_changes:
        if pop.site is not None and pop.site not in stations:
            fail(f"population change at day {pop.at_day}: unknown site {pop.site!r}")
        if pop.prevalence is not None and not 0.0 < pop.prevalence < 1.0:
            fail(f"population change at day {pop.at_day}: prevalence must lie in (0, 1)")
        if pop.at_day < 0:
            fail("population change at_day must be >= 0")


def _validate_scanner(scanner: Scanner, site: Site, fail: Callable[[str], NoReturn]) -> None:
    if scanner.site != site.name or scanner.institution_name != site.institution_name:
        fail(
            f"scanner {scanner.station_name!r} names site {scanner.site!r} / "
            f"{scanner.institution_name!r} but belongs to {site.name!r}"
        )
    if not 0 < len(scanner.station_name) <= 16:
        fail(f"station name {scanner.station_name!r} must be 1..16 characters (DICOM SH)")
    if scanner.kvp <= 0 or scanner.pixel_spacing <= 0 or scanner.share <= 0:
        fail(f"scanner {scanner.station_name!r} needs kvp, pixel_spacing and share > 0")
    if not scanner.view_positions or any(w < 0 for _, w in scanner.view_positions):
        fail(f"scanner {scanner.station_name!r} needs a view_positions mix with weights >= 0")


# ----------------------------------------------------------------- helpers (public)
def expected_operating_point(
    quality: float = 0.0,
    score_shift: float = 0.0,
    negative_score_shift: float = 0.0,
    noise_scale: float = 1.0,
    threshold: float = THRESHOLD,
    logit_negative: tuple[float, float] = (MU_NEG, SIGMA_NEG),
    logit_positive: tuple[float, float] = (MU_POS, SIGMA_POS),
) -> tuple[float, float]:
    """The model's (sensitivity, specificity) at ``threshold`` on one scanner."""
    t = _logit(threshold)
    mu0, s0 = logit_negative
    mu1, s1 = logit_positive
    sensitivity = 1.0 - _phi((t - (mu1 + quality + score_shift)) / (s1 * noise_scale))
    specificity = _phi((t - (mu0 + quality + negative_score_shift)) / (s0 * noise_scale))
    return sensitivity, specificity


def change_effect(
    quality: float,
    target_sensitivity: float,
    noise_scale: float = 1.4,
    threshold: float = THRESHOLD,
    logit_negative: tuple[float, float] = (MU_NEG, SIGMA_NEG),
    logit_positive: tuple[float, float] = (MU_POS, SIGMA_POS),
) -> tuple[float, float]:
    """``(score_shift, negative_score_shift)`` for a scanner with bias ``quality``
    whose logit noise grows by ``noise_scale``, such that its sensitivity becomes
    ``target_sensitivity`` while its specificity stays what it was."""
    t = _logit(threshold)
    mu0 = logit_negative[0]
    mu1, s1 = logit_positive
    z = NormalDist().inv_cdf(target_sensitivity)
    score_shift = t + z * s1 * noise_scale - (mu1 + quality)
    negative_score_shift = (noise_scale - 1.0) * (mu0 + quality - t)
    return round(score_shift, 4), round(negative_score_shift, 4)


def default_config(days: int = 90, seed: int = 7, change_day: int | None = None) -> SyntheticConfig:
    """The demo deployment: :data:`DEFAULT_SITES` and one software update of the GE
    room ``NGH-DR1`` at Northgate on ``change_day`` (default ``2/3 x days``) that
    drops its sensitivity from ~0.90 to ~0.65 (specificity unchanged)."""
    if change_day is None:
        change_day = (2 * days) // 3
    ge = DEFAULT_SITES[0].scanners[0]
    score_shift, negative_shift = change_effect(ge.quality, 0.65, noise_scale=1.4)
    change = ScannerChange(
        at_day=change_day,
        site=ge.site,
        station=ge.station_name,
        software_versions="dm_Platform_release_FW32.0-2",
        score_shift=score_shift,
        negative_score_shift=negative_shift,
        noise_scale=1.4,
        kvp_shift=-5.0,
    )
    return SyntheticConfig(days=days, seed=seed, changes=(change,))


# --------------------------------------------------------------------- simulation
@dataclass(slots=True)
class _State:
    """A station's header fields and model effect on a given day."""

    scanner: Scanner
    software_versions: str
    kvp: float
    pixel_spacing: float
    convolution_kernel: str | None
    score_shift: float = 0.0
    negative_score_shift: float = 0.0
    noise_scale: float = 1.0


@dataclass(slots=True)
class _Study:
    number: int
    site: str
    station: str
    acquired: datetime
    metadata_at: datetime
    predicted_at: datetime
    event: DicomMetadataEvent  # without position
    outputs: dict[str, float]
    present: tuple[bool, ...]
    label_at: datetime | None
    label_source: str


@dataclass(slots=True)
class _Simulation:
    studies: list[_Study] = field(default_factory=list)


def _station_states(config: SyntheticConfig, site: Site, day: int) -> list[_State]:
    states = [
        _State(s, s.software_versions, s.kvp, s.pixel_spacing, s.convolution_kernel)
        for s in site.scanners
    ]
    for change in sorted(config.changes, key=lambda c: c.at_day):
        if change.site != site.name or change.at_day > day:
            continue
        if change.kind == "new-scanner":
            assert change.scanner is not None
            new = change.scanner
            states.append(
                _State(
                    new, new.software_versions, new.kvp, new.pixel_spacing, new.convolution_kernel
                )
            )
        state = next(s for s in states if s.scanner.station_name == change.station)
        if change.kind == "software-update":
            if change.software_versions is not None:
                state.software_versions = change.software_versions
            state.kvp += change.kvp_shift
            if change.pixel_spacing is not None:
                state.pixel_spacing = change.pixel_spacing
            if change.convolution_kernel is not None:
                state.convolution_kernel = change.convolution_kernel
        state.score_shift += change.score_shift
        state.negative_score_shift += change.negative_score_shift
        state.noise_scale *= change.noise_scale
    return states


def _population(config: SyntheticConfig, site: str, day: int) -> tuple[float, float]:
    prevalence, age_shift = config.prevalence, 0.0
    for pop in sorted(config.population_changes, key=lambda p: p.at_day):
        if pop.at_day <= day and pop.site in (None, site):
            if pop.prevalence is not None:
                prevalence = pop.prevalence
            age_shift += pop.age_shift
    return prevalence, age_shift


def _uid(rng: np.random.Generator) -> str:
    value = int.from_bytes(rng.bytes(16), "big") or 1
    return f"2.25.{value}"


def _site_code(name: str) -> str:
    letters = "".join(ch for ch in name.upper() if ch.isalpha())
    return (letters + "XXX")[:3]


def _choice(
    rng: np.random.Generator, weights: npt.NDArray[np.float64], n: int
) -> npt.NDArray[np.intp]:
    cumulative = np.cumsum(weights / weights.sum())
    cumulative[-1] = 1.0
    return np.searchsorted(cumulative, rng.random(n), side="right")


def _view(scanner: Scanner, u: float) -> str:
    """The ViewPosition for a uniform draw ``u`` under the scanner's mix."""
    total = sum(w for _, w in scanner.view_positions)
    cumulative = 0.0
    for value, weight in scanner.view_positions:
        cumulative += weight / total
        if u < cumulative:
            return value
    return scanner.view_positions[-1][0]


def _simulate(config: SyntheticConfig) -> _Simulation:
    rng = np.random.Generator(np.random.PCG64(config.seed))
    sim = _Simulation()
    end = config.end
    findings = config.findings
    n_find = len(findings)
    mu0, s0 = config.logit_negative
    mu1, s1 = config.logit_positive
    delay_low, delay_high = config.label_delay_days
    source_names = [name for name, _ in config.diagnosis_sources]
    source_weights = np.array([w for _, w in config.diagnosis_sources], dtype=float)
    patients: dict[str, list[tuple[str, str, int]]] = {s.name: [] for s in config.sites}
    patient_counter = {s.name: 0 for s in config.sites}
    site_index = {s.name: i for i, s in enumerate(config.sites)}
    number = 0
    for day in range(config.days):
        day_start = config.start + timedelta(days=day)
        weekend = day_start.astimezone(UTC).weekday() >= 5
        for site in config.sites:
            states = _station_states(config, site, day)
            prevalence, age_shift = _population(config, site.name, day)
            mean = site.studies_per_day * (WEEKEND_FACTOR if weekend else 1.0)
            n = int(rng.poisson(mean))
            if n == 0:
                continue
            daytime = rng.random(n) < DAYTIME_FRACTION
            seconds = np.where(
                daytime, 7 * 3600 + rng.random(n) * 12 * 3600, rng.random(n) * 86400.0
            )
            seconds.sort()
            which = _choice(rng, np.array([s.scanner.share for s in states]), n)
            meta_lag = np.minimum(1.0 + rng.lognormal(0.0, 0.6, n), MAX_LAG_MINUTES)
            pred_lag = np.minimum(rng.lognormal(math.log(4.0), 0.5, n), MAX_LAG_MINUTES)
            returning = rng.random(n) < RETURNING_PATIENT_FRACTION
            male = rng.random(n) < MALE_FRACTION
            ages = np.clip(np.rint(rng.normal(AGE_MEAN + age_shift, AGE_SD, n)), AGE_MIN, AGE_MAX)
            pick = rng.random(n)
            view_u = rng.random(n)
            kvp_noise = rng.normal(0.0, 2.0, n)
            present = rng.random((n, n_find)) < prevalence
            noise = rng.standard_normal((n, n_find))
            labelled = rng.random(n) < config.label_fraction
            delays = delay_low + rng.random(n) * (delay_high - delay_low)
            sources = _choice(rng, source_weights, n)
            uids = [_uid(rng) for _ in range(n)]
            accession = rng.integers(0, 10**9, n)

            quality = np.array([states[w].scanner.quality for w in which])
            pos_shift = np.array([states[w].score_shift for w in which])
            neg_shift = np.array([states[w].negative_score_shift for w in which])
            scale = np.array([states[w].noise_scale for w in which])[:, None]
            logits = np.where(
                present,
                mu1 + (quality + pos_shift)[:, None] + scale * s1 * noise,
                mu0 + (quality + neg_shift)[:, None] + scale * s0 * noise,
            )
            scores = np.round(1.0 / (1.0 + np.exp(-logits)), 6)

            pool = patients[site.name]
            for i in range(n):
                state = states[int(which[i])]
                scanner = state.scanner
                if returning[i] and pool:
                    patient_id, sex, age = pool[int(pick[i] * len(pool))]
                else:
                    patient_counter[site.name] += 1
                    patient_id = f"{_site_code(site.name)}{patient_counter[site.name]:07d}"
                    sex, age = ("M" if male[i] else "F"), int(ages[i])
                    pool.append((patient_id, sex, age))
                view = _view(scanner, float(view_u[i]))
                acquired = day_start + timedelta(seconds=float(seconds[i]))
                study_date: date = acquired.astimezone(UTC).date()
                metadata = DicomMetadataEvent(
                    study_instance_uid=uids[i],
                    patient_id=patient_id,
                    accession_number=f"A{site_index[site.name]}{int(accession[i]):09d}",
                    station_name=scanner.station_name,
                    institution_name=scanner.institution_name,
                    modality="DX",
                    study_date=study_date,
                    manufacturer=scanner.manufacturer,
                    manufacturer_model_name=scanner.manufacturer_model_name,
                    software_versions=state.software_versions,
                    convolution_kernel=state.convolution_kernel,
                    kvp=float(round(state.kvp + kvp_noise[i])),
                    pixel_spacing=state.pixel_spacing,
                    body_part_examined="CHEST",
                    view_position=view,
                    patient_sex=sex,
                    age_band=age_band(age),
                )
                label_at: datetime | None = None
                if labelled[i]:
                    candidate = acquired + timedelta(days=float(delays[i]))
                    if candidate < end:
                        label_at = candidate
                sim.studies.append(
                    _Study(
                        number=number,
                        site=site.name,
                        station=scanner.station_name,
                        acquired=acquired,
                        metadata_at=acquired + timedelta(minutes=float(meta_lag[i])),
                        predicted_at=acquired + timedelta(minutes=float(pred_lag[i])),
                        event=metadata,
                        outputs={f: float(scores[i, j]) for j, f in enumerate(findings)},
                        present=tuple(bool(p) for p in present[i]),
                        label_at=label_at,
                        label_source=source_names[int(sources[i])],
                    )
                )
                number += 1
    return sim


_METADATA, _PREDICTION, _DIAGNOSIS = 0, 1, 2


def events(config: SyntheticConfig | None = None) -> Iterator[Event]:
    """All events of the simulated deployment, in arrival order (see module docstring)."""
    config = config or default_config()
    sim = _simulate(config)
    schedule: list[tuple[datetime, int, int, int]] = []
    for study in sim.studies:
        schedule.append((study.metadata_at, study.number, _METADATA, 0))
        schedule.append((study.predicted_at, study.number, _PREDICTION, 0))
        if study.label_at is not None:
            for j in range(len(config.findings)):
                schedule.append((study.label_at, study.number, _DIAGNOSIS, j))
    schedule.sort()
    n_pred = n_dx = 0
    for offset, (moment, number, kind, j) in enumerate(schedule):
        study = sim.studies[number]
        position = SourcePosition(source=SOURCE, locator=LOCATOR, offset=offset)
        if kind == _METADATA:
            yield _with_position(study.event, position)
        elif kind == _PREDICTION:
            n_pred += 1
            yield PredictionEvent(
                message_id=f"pred-{n_pred}",
                model=config.model,
                model_version=config.model_version,
                study_instance_uid=study.event.study_instance_uid,
                outputs=dict(study.outputs),
                predicted_at=moment,
                position=position,
            )
        else:
            n_dx += 1
            yield DiagnosisEvent(
                message_id=f"dx-{n_dx}",
                study_instance_uid=study.event.study_instance_uid,
                finding=config.findings[j],
                present=study.present[j],
                source=study.label_source,
                confirmed_at=moment,
                position=position,
            )


def _with_position(event: DicomMetadataEvent, position: SourcePosition) -> DicomMetadataEvent:
    e = event
    return DicomMetadataEvent(
        study_instance_uid=e.study_instance_uid,
        patient_id=e.patient_id,
        accession_number=e.accession_number,
        station_name=e.station_name,
        institution_name=e.institution_name,
        modality=e.modality,
        study_date=e.study_date,
        manufacturer=e.manufacturer,
        manufacturer_model_name=e.manufacturer_model_name,
        software_versions=e.software_versions,
        convolution_kernel=e.convolution_kernel,
        slice_thickness=e.slice_thickness,
        kvp=e.kvp,
        pixel_spacing=e.pixel_spacing,
        magnetic_field_strength=e.magnetic_field_strength,
        body_part_examined=e.body_part_examined,
        view_position=e.view_position,
        patient_sex=e.patient_sex,
        age_band=e.age_band,
        position=position,
    )


def write_jsonl(config: SyntheticConfig | None, path: str | Path) -> int:
    """Write the event stream as a JSONL event file; returns the number of lines."""
    count = 0
    with Path(path).open("w", encoding="utf-8", newline="\n") as handle:
        for event in events(config):
            handle.write(event_to_jsonl(event))
            handle.write("\n")
            count += 1
    return count


# -------------------------------------------------------------------- ground truth
def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _auroc(components: list[tuple[float, float, float, float, float]]) -> float:
    """AUROC of a mixture of binormal scanners: (weight, mu0, s0, mu1, s1) each."""
    total = 0.0
    weight_sum = 0.0
    for w_i, _, _, mu1, s1 in components:
        for w_j, mu0, s0, _, _ in components:
            total += w_i * w_j * _phi((mu1 - mu0) / math.hypot(s0, s1))
            weight_sum += w_i * w_j
    return total / weight_sum


def ground_truth(config: SyntheticConfig | None = None) -> dict[str, Any]:
    """What the simulation was built to contain, for tests and the demo summary.

    Keys: model facts, the period, the model parameters, ``expected_pre_change``
    (pooled sensitivity/specificity/AUROC at day 0), ``scanners`` (per station:
    expected sensitivity/specificity at day 0 and at the end), ``changes`` (one
    entry per scanner change with its before/after software and expected
    sensitivity/specificity), ``population_changes``, and, for the first scanner
    change (``None`` without one), the shortcuts ``change_day``, ``change_at``,
    ``changed_site``, ``changed_station``, ``expected_sensitivity_pre`` and
    ``expected_sensitivity_post``.
    """
    config = config or default_config()
    mu0, s0 = config.logit_negative
    mu1, s1 = config.logit_positive
    params = {"logit_negative": config.logit_negative, "logit_positive": config.logit_positive}

    def point(state: _State) -> tuple[float, float]:
        return expected_operating_point(
            state.scanner.quality,
            state.score_shift,
            state.negative_score_shift,
            state.noise_scale,
            THRESHOLD,
            config.logit_negative,
            config.logit_positive,
        )

    scanners: list[dict[str, Any]] = []
    pooled_sens = pooled_spec = weight_total = 0.0
    components: list[tuple[float, float, float, float, float]] = []
    for site in config.sites:
        first = _station_states(config, site, 0)
        last = {s.scanner.station_name: s for s in _station_states(config, site, config.days - 1)}
        share_sum = sum(s.scanner.share for s in first)
        for state in first:
            weight = site.studies_per_day * state.scanner.share / share_sum
            sens, spec = point(state)
            pooled_sens += weight * sens
            pooled_spec += weight * spec
            weight_total += weight
            q = state.scanner.quality
            components.append((weight, mu0 + q, s0, mu1 + q, s1))
        for station, state in last.items():
            start_state = next((s for s in first if s.scanner.station_name == station), None)
            sens_end, spec_end = point(state)
            entry: dict[str, Any] = {
                "site": site.name,
                "station": station,
                "manufacturer": state.scanner.manufacturer,
                "manufacturer_model_name": state.scanner.manufacturer_model_name,
                "quality": state.scanner.quality,
                "expected_sensitivity_end": sens_end,
                "expected_specificity_end": spec_end,
            }
            if start_state is not None:
                sens0, spec0 = point(start_state)
                entry["expected_sensitivity_start"] = sens0
                entry["expected_specificity_start"] = spec0
            scanners.append(entry)

    changes: list[dict[str, Any]] = []
    for change in sorted(config.changes, key=lambda c: c.at_day):
        site = next(s for s in config.sites if s.name == change.site)
        before_states = _station_states(config, site, change.at_day - 1)
        after_states = _station_states(config, site, change.at_day)
        before = next((s for s in before_states if s.scanner.station_name == change.station), None)
        after = next(s for s in after_states if s.scanner.station_name == change.station)
        sens_after, spec_after = point(after)
        changes.append(
            {
                "kind": change.kind,
                "at_day": change.at_day,
                "at": _iso(config.start + timedelta(days=change.at_day)),
                "site": change.site,
                "station": change.station,
                "manufacturer": after.scanner.manufacturer,
                "software_before": before.software_versions if before else None,
                "software_after": after.software_versions,
                "kvp_before": before.kvp if before else None,
                "kvp_after": after.kvp,
                "expected_sensitivity_before": point(before)[0] if before else None,
                "expected_specificity_before": point(before)[1] if before else None,
                "expected_sensitivity_after": sens_after,
                "expected_specificity_after": spec_after,
                "within_period": change.at_day < config.days,
            }
        )
    first_change = changes[0] if changes else None
    return {
        "model": config.model,
        "model_version": config.model_version,
        "findings": list(config.findings),
        "seed": config.seed,
        "start": _iso(config.start),
        "end": _iso(config.end),
        "days": config.days,
        "threshold": THRESHOLD,
        "prevalence": config.prevalence,
        "label_delay_days": list(config.label_delay_days),
        "label_fraction": config.label_fraction,
        "parameters": params,
        "expected_pre_change": {
            "sensitivity": pooled_sens / weight_total,
            "specificity": pooled_spec / weight_total,
            "auroc": _auroc(components),
        },
        "scanners": scanners,
        "changes": changes,
        "population_changes": [
            {
                "at_day": p.at_day,
                "site": p.site,
                "prevalence": p.prevalence,
                "age_shift": p.age_shift,
            }
            for p in config.population_changes
        ],
        "change_day": first_change["at_day"] if first_change else None,
        "change_at": first_change["at"] if first_change else None,
        "changed_site": first_change["site"] if first_change else None,
        "changed_station": first_change["station"] if first_change else None,
        "expected_sensitivity_pre": (
            first_change["expected_sensitivity_before"] if first_change else None
        ),
        "expected_sensitivity_post": (
            first_change["expected_sensitivity_after"] if first_change else None
        ),
    }


__all__ = [
    "DEFAULT_DIAGNOSIS_SOURCES",
    "DEFAULT_SITES",
    "MU_NEG",
    "MU_POS",
    "SIGMA_NEG",
    "SIGMA_POS",
    "THRESHOLD",
    "PopulationChange",
    "Scanner",
    "ScannerChange",
    "Site",
    "SyntheticConfig",
    "change_effect",
    "default_config",
    "events",
    "expected_operating_point",
    "ground_truth",
    "write_jsonl",
]
