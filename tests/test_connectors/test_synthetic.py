"""The synthetic deployment: determinism, record format, timing and the planted signals."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import UID
from scipy.stats import rankdata

from connectors.records import event_to_jsonl, parse_jsonl_line
from connectors.synthetic import (
    DEFAULT_SITES,
    THRESHOLD,
    PopulationChange,
    Scanner,
    ScannerChange,
    SyntheticConfig,
    default_config,
    events,
    expected_operating_point,
    ground_truth,
    write_jsonl,
)
from surveillance.core.errors import ConfigError
from surveillance.core.events import (
    DIAGNOSIS_SOURCES,
    DiagnosisEvent,
    DicomMetadataEvent,
    Event,
    PredictionEvent,
    SourcePosition,
)

# ----------------------------------------------------------------------- helpers


@dataclass
class Study:
    metadata: DicomMetadataEvent
    prediction: PredictionEvent
    labels: dict[str, DiagnosisEvent]


def studies_of(stream: list[Event]) -> dict[str, Study]:
    metadata: dict[str, DicomMetadataEvent] = {}
    predictions: dict[str, PredictionEvent] = {}
    labels: dict[str, dict[str, DiagnosisEvent]] = {}
    for event in stream:
        if isinstance(event, DicomMetadataEvent):
            assert event.study_instance_uid not in metadata
            metadata[event.study_instance_uid] = event
        elif isinstance(event, PredictionEvent):
            assert event.study_instance_uid not in predictions
            predictions[event.study_instance_uid] = event
        else:
            labels.setdefault(event.study_instance_uid, {})[event.finding] = event
    assert metadata.keys() == predictions.keys()
    assert labels.keys() <= metadata.keys()
    return {uid: Study(metadata[uid], predictions[uid], labels.get(uid, {})) for uid in metadata}


def labelled(
    studies: dict[str, Study], finding: str = "pneumothorax"
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, truth) of the studies that have a label for ``finding``."""
    rows = [
        (s.prediction.outputs[finding], s.labels[finding].present)
        for s in studies.values()
        if finding in s.labels
    ]
    scores = np.array([r[0] for r in rows], dtype=float)
    truth = np.array([r[1] for r in rows], dtype=bool)
    return scores, truth


def sens_spec(scores: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    predicted = scores >= THRESHOLD
    return float(predicted[truth].mean()), float((~predicted[~truth]).mean())


def auroc(scores: np.ndarray, truth: np.ndarray) -> float:
    ranks = rankdata(scores)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def day_of(metadata: DicomMetadataEvent) -> date:
    assert metadata.study_date is not None
    return metadata.study_date


def event_time(event: Event) -> datetime:
    if isinstance(event, DiagnosisEvent):
        return event.confirmed_at
    if isinstance(event, PredictionEvent):
        return event.predicted_at
    raise TypeError("metadata events carry no arrival time")


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def config() -> SyntheticConfig:
    return default_config()


@pytest.fixture(scope="module")
def stream(config: SyntheticConfig) -> list[Event]:
    return list(events(config))


@pytest.fixture(scope="module")
def long_config() -> SyntheticConfig:
    """240 days, change at day 60, fast complete labels: enough post-change positives."""
    return dataclasses.replace(
        default_config(days=240, seed=11, change_day=60),
        label_delay_days=(1.0, 7.0),
        label_fraction=1.0,
    )


@pytest.fixture(scope="module")
def long_studies(long_config: SyntheticConfig) -> dict[str, Study]:
    return studies_of(list(events(long_config)))


def split(
    studies: dict[str, Study], config: SyntheticConfig, change_day: int
) -> tuple[dict[str, Study], dict[str, Study]]:
    cut = (config.start + timedelta(days=change_day)).date()
    pre = {u: s for u, s in studies.items() if day_of(s.metadata) < cut}
    post = {u: s for u, s in studies.items() if day_of(s.metadata) >= cut}
    return pre, post


def at_station(studies: dict[str, Study], station: str | None) -> dict[str, Study]:
    return {u: s for u, s in studies.items() if s.metadata.station_name == station}


# ------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_stream(config: SyntheticConfig, stream: list[Event]) -> None:
    again = list(events(default_config()))
    assert again == stream


def test_different_seed_gives_different_stream(stream: list[Event]) -> None:
    other = list(events(default_config(seed=8)))
    assert [event_to_jsonl(e) for e in other[:50]] != [event_to_jsonl(e) for e in stream[:50]]


# ---------------------------------------------------------------- record format


def test_every_event_round_trips_through_jsonl(stream: list[Event]) -> None:
    for event in stream:
        parsed = parse_jsonl_line(event_to_jsonl(event))
        assert parsed == dataclasses.replace(event, position=None), event_to_jsonl(event)


def test_write_jsonl_writes_one_line_per_event(tmp_path: Path, stream: list[Event]) -> None:
    path = tmp_path / "feed.jsonl"
    count = write_jsonl(default_config(), path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert count == len(lines) == len(stream)
    assert lines[0] == event_to_jsonl(stream[0])
    assert lines[-1] == event_to_jsonl(stream[-1])


def test_positions_are_sequential_offsets_of_the_synthetic_feed(stream: list[Event]) -> None:
    assert [e.position for e in stream] == [
        SourcePosition(source="synthetic", locator="synthetic-feed", offset=i)
        for i in range(len(stream))
    ]


def test_metadata_fields_look_like_a_chest_radiograph(stream: list[Event]) -> None:
    metadata = [e for e in stream if isinstance(e, DicomMetadataEvent)]
    assert {m.modality for m in metadata} == {"DX"}
    assert {m.body_part_examined for m in metadata} == {"CHEST"}
    assert {m.patient_sex for m in metadata} == {"M", "F"}
    assert {m.view_position for m in metadata} == {"PA", "AP"}
    bands = Counter(m.age_band for m in metadata)
    assert set(bands) <= {
        "10-19",
        "20-29",
        "30-39",
        "40-49",
        "50-59",
        "60-69",
        "70-79",
        "80-89",
        "90+",
    }
    assert bands.most_common(1)[0][0] in {"50-59", "60-69"}
    manufacturers = {m.manufacturer for m in metadata}
    assert len(manufacturers) == 6
    assert all(m.patient_id and m.accession_number and m.institution_name for m in metadata)
    # Returning patients: fewer distinct PatientIDs than studies.
    patients = {m.patient_id for m in metadata}
    assert 0.7 * len(metadata) < len(patients) < 0.9 * len(metadata)


# ------------------------------------------------------------- counts and timing


def test_counts_by_kind_are_plausible(config: SyntheticConfig, stream: list[Event]) -> None:
    kinds = Counter(e.kind for e in stream)
    per_weekday = sum(site.studies_per_day for site in config.sites)
    expected = per_weekday * config.days * (5 + 2 * 0.55) / 7
    assert kinds["dicom-metadata"] == kinds["prediction"]
    assert abs(kinds["prediction"] - expected) < 0.05 * expected
    # 85 % get a label eventually; the last weeks' labels have not arrived yet.
    assert 0.70 * kinds["prediction"] < kinds["diagnosis"] < 0.85 * kinds["prediction"]


def test_events_are_in_arrival_order(stream: list[Event]) -> None:
    times = [event_time(e) for e in stream if not isinstance(e, DicomMetadataEvent)]
    assert times == sorted(times)


def test_predictions_sometimes_arrive_before_their_header(stream: list[Event]) -> None:
    seen_header: set[str] = set()
    early = 0
    for event in stream:
        if isinstance(event, DicomMetadataEvent):
            seen_header.add(event.study_instance_uid)
        elif isinstance(event, PredictionEvent) and event.study_instance_uid not in seen_header:
            early += 1
    n = sum(isinstance(e, PredictionEvent) for e in stream)
    assert 0.02 * n < early < 0.5 * n


def test_study_events_fall_in_the_period(config: SyntheticConfig, stream: list[Event]) -> None:
    for event in stream:
        if isinstance(event, DicomMetadataEvent):
            assert config.start.date() <= day_of(event) < config.end.date()
        elif isinstance(event, PredictionEvent):
            assert config.start <= event.predicted_at < config.end + timedelta(minutes=31)


def test_no_diagnosis_is_confirmed_after_the_end(
    config: SyntheticConfig, stream: list[Event]
) -> None:
    confirmed = [e.confirmed_at for e in stream if isinstance(e, DiagnosisEvent)]
    assert confirmed
    assert max(confirmed) < config.end
    assert max(confirmed) > config.end - timedelta(days=1)


def test_label_delays_are_within_bounds(config: SyntheticConfig, stream: list[Event]) -> None:
    low, high = config.label_delay_days
    studies = studies_of(stream)
    delays = []
    for study in studies.values():
        for label in study.labels.values():
            # predicted_at is 0..30 minutes after acquisition
            delay = label.confirmed_at - study.prediction.predicted_at
            assert timedelta(days=low) - timedelta(minutes=30) <= delay <= timedelta(days=high)
            delays.append(delay / timedelta(days=1))
    assert min(delays) < low + 1 and max(delays) > high - 1


def test_label_fraction_once_all_labels_had_time_to_arrive(
    config: SyntheticConfig, stream: list[Event]
) -> None:
    cutoff = (config.end - timedelta(days=config.label_delay_days[1] + 1)).date()
    old = [s for s in studies_of(stream).values() if day_of(s.metadata) < cutoff]
    fraction = sum(bool(s.labels) for s in old) / len(old)
    assert fraction == pytest.approx(config.label_fraction, abs=0.03)


def test_diagnosis_sources_follow_the_mix(stream: list[Event]) -> None:
    sources = Counter(e.source for e in stream if isinstance(e, DiagnosisEvent))
    assert set(sources) <= set(DIAGNOSIS_SOURCES)
    assert sources.most_common(1)[0][0] == "report"
    total = sum(sources.values())
    assert sources["report"] / total == pytest.approx(0.60, abs=0.04)


def test_prevalence_matches_configuration(config: SyntheticConfig, stream: list[Event]) -> None:
    labels = [e.present for e in stream if isinstance(e, DiagnosisEvent)]
    assert np.mean(labels) == pytest.approx(config.prevalence, abs=0.02)


# ------------------------------------------------------------------ identifiers


def test_message_ids_and_study_uids_are_unique_and_valid(stream: list[Event]) -> None:
    ids = [e.message_id for e in stream if not isinstance(e, DicomMetadataEvent)]
    assert len(ids) == len(set(ids))
    assert all(i.startswith(("pred-", "dx-")) for i in ids)
    uids = [e.study_instance_uid for e in stream if isinstance(e, DicomMetadataEvent)]
    assert len(uids) == len(set(uids))
    assert all(UID(u).is_valid for u in uids)
    accessions = [e.accession_number for e in stream if isinstance(e, DicomMetadataEvent)]
    assert len(accessions) == len(set(accessions))


# --------------------------------------------------------------- model performance


def test_pre_change_operating_point_matches_documented_targets(
    long_config: SyntheticConfig, long_studies: dict[str, Study]
) -> None:
    pre, _ = split(long_studies, long_config, 60)
    scores, truth = labelled(pre)
    sensitivity, specificity = sens_spec(scores, truth)
    assert sensitivity == pytest.approx(0.90, abs=0.05)
    assert specificity == pytest.approx(0.90, abs=0.05)
    assert auroc(scores, truth) == pytest.approx(0.95, abs=0.02)
    expected = ground_truth(long_config)["expected_pre_change"]
    assert expected["sensitivity"] == pytest.approx(0.90, abs=0.01)
    assert expected["specificity"] == pytest.approx(0.90, abs=0.01)
    assert expected["auroc"] == pytest.approx(auroc(scores, truth), abs=0.02)


def test_sensitivity_drops_only_at_the_changed_scanner(
    long_config: SyntheticConfig, long_studies: dict[str, Study]
) -> None:
    truth_info = ground_truth(long_config)
    changed = truth_info["changed_station"]
    assert truth_info["expected_sensitivity_pre"] == pytest.approx(0.90, abs=0.02)
    assert truth_info["expected_sensitivity_post"] == pytest.approx(0.65, abs=0.01)
    pre, post = split(long_studies, long_config, 60)
    pre_sens, pre_spec = sens_spec(*labelled(at_station(pre, changed)))
    post_sens, post_spec = sens_spec(*labelled(at_station(post, changed)))
    assert pre_sens > 0.80
    assert pre_sens - post_sens > 0.10
    assert post_sens < 0.75
    assert post_sens == pytest.approx(0.65, abs=0.07)
    assert post_spec == pytest.approx(0.90, abs=0.04)
    assert abs(post_spec - pre_spec) < 0.04
    stations = {s.metadata.station_name for s in long_studies.values()}
    for station in stations - {changed}:
        sensitivity, specificity = sens_spec(*labelled(at_station(post, station)))
        assert sensitivity > 0.85, station
        assert specificity > 0.85, station


def test_score_distribution_of_the_changed_scanner_shifts(
    long_config: SyntheticConfig, long_studies: dict[str, Study]
) -> None:
    changed = ground_truth(long_config)["changed_station"]
    pre, post = split(long_studies, long_config, 60)
    pre_scores, pre_truth = labelled(at_station(pre, changed))
    post_scores, post_truth = labelled(at_station(post, changed))
    assert np.median(pre_scores[~pre_truth]) - np.median(post_scores[~post_truth]) > 0.05
    other = next(
        s
        for s in sorted({str(s.metadata.station_name) for s in long_studies.values()})
        if s != changed
    )
    other_pre, other_truth_pre = labelled(at_station(pre, other))
    other_post, other_truth_post = labelled(at_station(post, other))
    assert (
        abs(np.median(other_pre[~other_truth_pre]) - np.median(other_post[~other_truth_post]))
        < 0.03
    )


def test_expected_operating_point_for_a_neutral_scanner() -> None:
    sensitivity, specificity = expected_operating_point()
    assert sensitivity == pytest.approx(0.90, abs=1e-3)
    assert specificity == pytest.approx(0.90, abs=1e-3)


# ------------------------------------------------------------------ scanner changes


def test_software_version_changes_at_the_change_day(
    config: SyntheticConfig, stream: list[Event]
) -> None:
    info = ground_truth(config)
    assert info["change_day"] == 60
    change_date = (config.start + timedelta(days=60)).date()
    versions: dict[bool, set[str | None]] = {True: set(), False: set()}
    kvps: dict[bool, list[float]] = {True: [], False: []}
    for event in stream:
        if isinstance(event, DicomMetadataEvent) and event.station_name == info["changed_station"]:
            after = day_of(event) >= change_date
            versions[after].add(event.software_versions)
            kvps[after].append(event.kvp or 0.0)
    change = info["changes"][0]
    assert versions[False] == {change["software_before"]}
    assert versions[True] == {change["software_after"]}
    assert change["software_before"] != change["software_after"]
    assert np.mean(kvps[False]) - np.mean(kvps[True]) == pytest.approx(5.0, abs=1.0)
    others = {
        e.software_versions
        for e in stream
        if isinstance(e, DicomMetadataEvent) and e.station_name == "NGH-DR2"
    }
    assert len(others) == 1


def test_default_change_day_is_two_thirds_of_the_period() -> None:
    assert ground_truth(default_config(days=30))["change_day"] == 20
    assert ground_truth(default_config(days=90, change_day=10))["change_day"] == 10


def test_no_change_means_no_change_keys() -> None:
    info = ground_truth(SyntheticConfig(days=3))
    assert info["changes"] == [] and info["change_day"] is None


def test_new_scanner_appears_from_its_day() -> None:
    site = DEFAULT_SITES[2]
    new = Scanner(
        site=site.name,
        institution_name=site.institution_name,
        station_name="LCH-NEW",
        manufacturer="Canon Medical Systems",
        manufacturer_model_name="CXDI-Elite",
        software_versions="1.0.0",
        kvp=110.0,
        pixel_spacing=0.125,
    )
    config = SyntheticConfig(
        days=20,
        changes=(
            ScannerChange(
                at_day=10, site=site.name, station="LCH-NEW", kind="new-scanner", scanner=new
            ),
        ),
    )
    metadata = [e for e in events(config) if isinstance(e, DicomMetadataEvent)]
    cut = (config.start + timedelta(days=10)).date()
    new_rows = [m for m in metadata if m.station_name == "LCH-NEW"]
    assert new_rows
    assert all(day_of(m) >= cut for m in new_rows)
    assert {m.manufacturer for m in new_rows} == {"Canon Medical Systems"}
    assert {m.institution_name for m in new_rows} == {site.institution_name}
    assert {m.pixel_spacing for m in new_rows} == {0.125}
    after = [
        m for m in metadata if m.institution_name == site.institution_name and day_of(m) >= cut
    ]
    assert len(new_rows) / len(after) == pytest.approx(1 / 3, abs=0.08)
    assert ground_truth(config)["changes"][0]["software_before"] is None


def test_kernel_and_pixel_spacing_change() -> None:
    config = SyntheticConfig(
        days=6,
        changes=(
            ScannerChange(
                at_day=3,
                site="Riverside",
                station="RUMC-DRX",
                software_versions="6.0",
                convolution_kernel="EVP-2",
                pixel_spacing=0.1,
            ),
        ),
    )
    rows = [
        e
        for e in events(config)
        if isinstance(e, DicomMetadataEvent) and e.station_name == "RUMC-DRX"
    ]
    cut = (config.start + timedelta(days=3)).date()
    assert {
        (r.software_versions, r.convolution_kernel, r.pixel_spacing)
        for r in rows
        if day_of(r) >= cut
    } == {("6.0", "EVP-2", 0.1)}
    assert {
        (r.software_versions, r.convolution_kernel, r.pixel_spacing)
        for r in rows
        if day_of(r) < cut
    } == {("5.7.412.0", None, 0.139)}


def test_population_change_raises_prevalence_and_age() -> None:
    config = SyntheticConfig(
        days=120,
        seed=3,
        label_delay_days=(0.0, 1.0),
        label_fraction=1.0,
        population_changes=(
            PopulationChange(at_day=60, site="Lakeshore", prevalence=0.30, age_shift=15.0),
        ),
    )
    studies = studies_of(list(events(config)))
    cut = (config.start + timedelta(days=60)).date()

    def rate(site: str, after: bool) -> float:
        rows = [
            s.labels["pneumothorax"].present
            for s in studies.values()
            if s.metadata.institution_name == site
            and "pneumothorax" in s.labels
            and (day_of(s.metadata) >= cut) == after
        ]
        return float(np.mean(rows))

    def old_fraction(site: str, after: bool) -> float:
        rows = [
            s.metadata.age_band in {"70-79", "80-89", "90+"}
            for s in studies.values()
            if s.metadata.institution_name == site and (day_of(s.metadata) >= cut) == after
        ]
        return float(np.mean(rows))

    lake, river = "Lakeshore Community Hospital", "Riverside University Medical Center"
    assert rate(lake, after=False) == pytest.approx(0.12, abs=0.03)
    assert rate(lake, after=True) == pytest.approx(0.30, abs=0.05)
    assert rate(river, after=True) == pytest.approx(0.12, abs=0.03)
    assert old_fraction(lake, after=True) > old_fraction(lake, after=False) + 0.1
    assert abs(old_fraction(river, after=True) - old_fraction(river, after=False)) < 0.06


def test_several_findings() -> None:
    config = SyntheticConfig(days=5, findings=("pneumothorax", "pleural-effusion"))
    stream = list(events(config))
    predictions = [e for e in stream if isinstance(e, PredictionEvent)]
    assert all(set(p.outputs) == {"pneumothorax", "pleural-effusion"} for p in predictions)
    assert all(0.0 <= v <= 1.0 for p in predictions for v in p.outputs.values())
    per_study = Counter(e.study_instance_uid for e in stream if isinstance(e, DiagnosisEvent))
    assert per_study and set(per_study.values()) == {2}


# --------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"start": datetime(2026, 7, 1)}, id="naive-start"),
        pytest.param({"days": 0}, id="no-days"),
        pytest.param({"prevalence": 1.5}, id="prevalence"),
        pytest.param({"label_delay_days": (10.0, 5.0)}, id="delay-order"),
        pytest.param({"diagnosis_sources": (("gossip", 1.0),)}, id="source"),
        pytest.param(
            {"changes": (ScannerChange(at_day=5, site="Nowhere", station="X"),)}, id="unknown-site"
        ),
        pytest.param(
            {"changes": (ScannerChange(at_day=5, site="Northgate", station="X"),)},
            id="unknown-station",
        ),
        pytest.param(
            {
                "changes": (
                    ScannerChange(at_day=5, site="Northgate", station="X", kind="new-scanner"),
                )
            },
            id="new-scanner-without-scanner",
        ),
        pytest.param(
            {"population_changes": (PopulationChange(at_day=1, prevalence=0.0),)},
            id="population-prevalence",
        ),
    ],
)
def test_invalid_configuration_is_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SyntheticConfig(**kwargs)  # type: ignore[arg-type]


def test_start_in_another_time_zone_is_accepted() -> None:
    from datetime import timezone

    config = SyntheticConfig(
        days=2, start=datetime(2026, 7, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    )
    first = next(e for e in events(config) if isinstance(e, PredictionEvent))
    assert first.predicted_at >= datetime(2026, 7, 1, tzinfo=UTC)
