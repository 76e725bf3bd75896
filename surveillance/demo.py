"""``surveillance demo``: the whole loop on SQLite and the synthetic feed.

It uses exactly the production path: the synthetic deployment is written as a
JSONL event file (plus two deliberately broken lines) and ingested by the same
code as ``surveillance ingest``; the checks and the incident policy are the ones
the daemon runs. Only the database (a SQLite file) and the key (generated in
the output folder) differ from a real install.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import threading
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from connectors import synthetic
from connectors.synthetic_images import ct_acquisition, ct_instance
from surveillance.analysis.embed import run_bbsd
from surveillance.analysis.image_signals import (
    IMAGE_QUALITY_EXTRACTOR,
    IMAGE_QUALITY_VERSION,
    fingerprint_dataset,
)
from surveillance.analysis.onset import coinciding_change, describe_change, persistent_onset
from surveillance.analysis.windows import floor_day
from surveillance.core.config import EXAMPLE_CONFIG, AlertChannelConfig, Settings, load_settings
from surveillance.demo_artifacts import write_demo_artifacts
from surveillance.incidents.alerts import process_alerts
from surveillance.intake.ingest import Ingestor, count_lines
from surveillance.intake.pseudonym import load_pseudonymizer
from surveillance.outputs.views import (
    drift_table,
    incidents_table,
    performance_table,
    volumes_table,
)
from surveillance.scheduling.checks import run_checks
from surveillance.store import Store
from surveillance.store.embeddings import EmbeddingWrite
from surveillance.store.engine import make_engine
from surveillance.store.ingest_writer import device_label
from surveillance.store.migrations import upgrade
from surveillance.store.types import utcnow


def broken_lines(predicted_at: datetime) -> tuple[str, ...]:
    """Two records the demo feeds on purpose to show dead letters: unparseable JSON, and a
    prediction of an unknown model dated ``predicted_at`` (inside the simulated
    deployment, so a report of it counts the dead letter)."""
    return (
        '{"kind": "prediction", "message_id": "broken-1", "model": "cxr-pneumothorax"',
        json.dumps(
            {
                "kind": "prediction",
                "message_id": "broken-2",
                "model": "cxr-unknown",
                "model_version": "1.0",
                "study_instance_uid": "1.2.3.4",
                "outputs": {"pneumothorax": 0.4},
                "predicted_at": predicted_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        ),
    )


DEMO_SENSITIVITY_AFTER = 0.50
#: The scanner that gets real CT pixels with a reconstruction change (no header change).
IMAGE_STATION = "NGH-DR2"
#: When its reconstruction changes, as a fraction of the demo's days.
IMAGE_CHANGE_FRACTION = 0.6


def demo_settings(out: Path) -> Settings:
    """The example configuration, pointed at the demo folder, with no external peers.

    Alerts go only to the loopback receiver of :func:`deliver_demo_alerts`; no
    Kafka broker or DICOM receiver is configured.
    """
    settings = load_settings(
        EXAMPLE_CONFIG,
        env={},
        overrides={
            "service.mode": "demo",
            "service.db_url": f"sqlite:///{(out / 'surveillance.db').resolve()}",
            "service.pseudonym_key_file": str(out / "pseudonym.key"),
        },
    )
    return settings.model_copy(
        update={
            "alerts": [],
            "kafka": settings.kafka.model_copy(update={"bootstrap": None}),
            "dicom": settings.dicom.model_copy(update={"receive": False, "drop_folder": None}),
        }
    )


def demo_feed(*, days: int, seed: int, start: datetime) -> synthetic.SyntheticConfig:
    """The default deployment, with its scanner update made severe enough that a
    28-day window at one scanner (~45 confirmed positives) shows it beyond doubt:
    sensitivity there falls from ~0.90 to ~0.50 while specificity holds."""
    base = synthetic.default_config(days=days, seed=seed, change_day=days // 2)
    change = base.changes[0]
    quality = next(
        sc.quality
        for site in base.sites
        for sc in site.scanners
        if sc.station_name == change.station
    )
    shift, negative_shift = synthetic.change_effect(
        quality, DEMO_SENSITIVITY_AFTER, noise_scale=change.noise_scale
    )
    severe = dataclasses.replace(change, score_shift=shift, negative_score_shift=negative_shift)
    return dataclasses.replace(base, start=start, changes=(severe,))


def run_demo(*, out: Path, days: int, seed: int, console: Console) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("surveillance.db*"):
        stale.unlink()
    key_file = out / "pseudonym.key"
    pseudonymizer = load_pseudonymizer(None, mode="demo", demo_dir=out)
    settings = demo_settings(out)
    assert settings.service.pseudonym_key_file == key_file

    now = utcnow()
    feed = demo_feed(days=days, seed=seed, start=floor_day(now) - timedelta(days=days))
    truth = synthetic.ground_truth(feed)
    change = truth["changes"][0]
    scanner = next(x for x in truth["scanners"] if x["station"] == change["station"])
    station_pseudonym = pseudonymizer("station", change["station"])
    changed = device_label(
        scanner["manufacturer"],
        scanner["manufacturer_model_name"],
        station_pseudonym,
        change["site"],
    )
    description = (
        f"software update {change['software_before']} -> {change['software_after']} on "
        f"{changed} on {change['at'][:10]} (day {change['at_day']}); the model's expected "
        f"sensitivity there falls {change['expected_sensitivity_before']:.2f} -> "
        f"{change['expected_sensitivity_after']:.2f}"
    )
    console.print(
        Panel.fit(
            f"[bold]surveillance demo[/]: {settings.models[0].name} {settings.models[0].version}, "
            f"{len(feed.sites)} sites, {sum(len(s.scanners) for s in feed.sites)} scanners, "
            f"{days} days of deployment\n"
            f"Injected: {description}\n"
            f"Database: {settings.service.db_url}",
            title="post-market surveillance",
        )
    )

    engine = make_engine(settings.service.db_url)
    upgrade(engine)
    store = Store(engine)
    store.registry.register_models(settings.models, actor="demo")
    for site in feed.sites:
        store.registry.set_site_label(
            pseudonymizer("institution", site.institution_name), site.name
        )

    events_file = out / "events.jsonl"
    synthetic.write_jsonl(feed, events_file)
    with events_file.open("a") as handle:
        handle.write("\n".join(broken_lines(feed.start + timedelta(hours=10))) + "\n")
    total = count_lines(events_file)

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("ingest events.jsonl", total=total)
        counts = Ingestor(store, pseudonymizer).ingest_jsonl(
            events_file, progress=lambda n: progress.advance(task, n)
        )
        embed = progress.add_task("BBSD embeddings (model outputs)", total=1)
        run_bbsd(store, store.registry.models())
        progress.advance(embed, 1)
        images = progress.add_task(f"image fingerprints ({IMAGE_STATION}, real CT)", total=1)
        image_change_at = feed.start + timedelta(days=round(days * IMAGE_CHANGE_FRACTION))
        image_label = _image_fingerprints(store, truth, pseudonymizer, image_change_at, seed)
        progress.advance(images, 1)
        checks = progress.add_task("drift + performance checks", total=2)
        results = run_checks(
            store,
            settings,
            as_of=now,
            progress=lambda _: (
                progress.advance(checks, 1) if progress.tasks[checks].completed < 2 else None
            ),
        )
        progress.update(checks, completed=2)

    console.print(
        f"ingested {counts.predictions_new} predictions, {counts.metadata} DICOM headers, "
        f"{counts.diagnoses_new} confirmed diagnoses; {counts.dead_letters} dead letter(s)"
    )
    for result in results:
        model = result.model
        console.print(volumes_table(store.checks.volumes(model.id)))
        console.print(drift_table(result.drift))
        console.print(performance_table(result.performance))
    console.print(incidents_table(store.incidents.find(status="open"), utcnow()))
    deliver_demo_alerts(store, settings, console)
    for letter in store.events.dead_letters():
        console.print(f"[yellow]dead letter[/] {letter.id} ({letter.position}): {letter.reason}")
    for path in write_demo_artifacts(store, settings, out, settings.models[0].name):
        console.print(f"wrote {path}")
    report = store.audit.verify()
    console.print(
        f"audit chain: {'intact' if report.ok else 'BROKEN'}, {report.events} events, "
        f"head {report.head_hash}"
    )

    _print_image_change(store, results, image_label, image_change_at, console)
    _print_change_events(store, settings, results, changed, console)
    caught = [
        i
        for i in store.incidents.find(status="open")
        if i.stratum_kind == "scanner" and i.stratum_value == changed
    ]
    if caught:
        console.print(
            f"[bold green]Caught:[/] the injected change at {changed} opened "
            f"{len(caught)} incident(s): " + "; ".join(f"#{i.id} {i.title}" for i in caught)
        )
    else:
        console.print(f"[bold red]Not caught:[/] no open incident at scanner {changed}")
    console.print(
        f"Try: {_command()} --db-url {settings.service.db_url} incidents list "
        "(or: incidents show ID, deadletters list, audit verify)"
    )
    store.close()


def _image_fingerprints(
    store: Store,
    truth: dict[str, Any],
    pseudonymizer: Any,
    change_at: datetime,
    seed: int,
) -> str:
    """Give :data:`IMAGE_STATION`'s studies real CT pixels (reconstruction change from
    ``change_at``), fingerprinted in HU and stored as the embed job does; returns its label."""
    scanner = next(x for x in truth["scanners"] if x["station"] == IMAGE_STATION)
    label = device_label(
        scanner["manufacturer"],
        scanner["manufacturer_model_name"],
        pseudonymizer("station", IMAGE_STATION),
        scanner["site"],
    )
    (model,) = store.registry.models()[:1]
    bbsd = next(
        e
        for e in store.embeddings.model_embeddings(
            model.id, datetime(1970, 1, 1, tzinfo=change_at.tzinfo), utcnow()
        )
        if e.extractor.startswith("bbsd:")
    )
    rng = np.random.default_rng(seed + 1009)
    at_change = np.datetime64(change_at.replace(tzinfo=None), "us")
    writes = []
    for study_id, at, where in zip(bbsd.study_ids, bbsd.at, bbsd.scanner, strict=True):
        if where != label:
            continue
        hu, spacing = ct_acquisition(rng, reconstruction_change=bool(at >= at_change))
        writes.append(EmbeddingWrite(int(study_id), fingerprint_dataset(ct_instance(hu, spacing))))
    store.embeddings.write_embeddings(
        IMAGE_QUALITY_EXTRACTOR, IMAGE_QUALITY_VERSION, writes, actor="demo"
    )
    return label


def _print_image_change(
    store: Store, results: Any, label: str, change_at: datetime, console: Console
) -> None:
    flagged = [
        c
        for r in results
        for c in r.drift
        if c.signal.startswith("image:")
        and c.stratum_kind == "scanner"
        and c.stratum_value == label
        and c.status == "drift"
    ]
    header = [
        c
        for r in results
        for c in r.drift
        if c.stratum_kind == "scanner"
        and c.stratum_value == label
        and c.status == "drift"
        and not c.signal.startswith("image:")
    ]
    if not flagged:
        console.print(f"[bold red]Image-only change not caught[/] at {label}")
        return
    first = min(c.window_start for c in flagged)
    signals = sorted({c.signal for c in flagged})
    best = max(flagged, key=lambda c: c.effect_size or 0.0)
    console.print(
        f"[bold green]Caught (image only):[/] reconstruction change at {label} on "
        f"{change_at:%Y-%m-%d} (sharper kernel, 1.75x noise; header and scores unchanged): "
        f"{', '.join(signals)} drifted from the window starting {first:%Y-%m-%d} "
        f"(largest effect {best.signal} KS D {best.effect_size:.2f}, adjusted p "
        f"{best.p_adjusted:.1e}); other signals drifting there: "
        f"{', '.join(sorted({c.signal for c in header})) or 'none'}"
    )


def _print_change_events(
    store: Store, settings: Settings, results: Any, label: str, console: Console
) -> None:
    for r in results:
        changes = store.checks.change_events(
            r.model.id, stratum_kind="scanner", stratum_value=label
        )
        by_signal: dict[str, list[Any]] = {}
        for c in store.checks.drift(r.model.id):  # the whole series: ok windows break runs
            if c.stratum_kind == "scanner" and c.stratum_value == label:
                by_signal.setdefault(c.signal, []).append(c)
        onsets = [
            o
            for o in (
                persistent_onset(checks, settings.drift.persistence_windows)
                for checks in by_signal.values()
            )
            if o is not None
        ]
        onset = min(onsets) if onsets else None
        match = coinciding_change(changes, onset, settings.drift.window_days)
        for change in changes:
            console.print(f"change event: {describe_change(change)}")
        if match is not None and onset is not None:
            console.print(
                f"[bold]drift at {label} since {onset:%Y-%m-%d}[/] coincides with: "
                f"{describe_change(match)}"
            )


def _command() -> str:
    """How to call the CLI from here: the venv's script when it is not on PATH."""
    script = Path(sys.executable).with_name("surveillance")
    if shutil.which("surveillance") or not script.exists():
        return "surveillance"
    return str(script)


class _AlertReceiver(BaseHTTPRequestHandler):
    """A stand-in for the on-call webhook: keeps what it is sent."""

    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        return


def deliver_demo_alerts(store: Store, settings: Settings, console: Console) -> None:
    """Page a webhook on loopback through the real alert path and show what arrived."""
    _AlertReceiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AlertReceiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
        channel = AlertChannelConfig(name="demo-webhook", type="webhook", url=url)
        process_alerts(store, settings.model_copy(update={"alerts": [channel]}))
    finally:
        server.shutdown()
        server.server_close()
    for body in _AlertReceiver.received[:2]:
        console.print(
            Panel(
                str(body.get("text", body)),
                title=f"alert delivered: incident #{body.get('incident_id')}",
            )
        )
    if len(_AlertReceiver.received) > 2:
        console.print(f"... and {len(_AlertReceiver.received) - 2} more alert(s) delivered")


__all__ = ["run_demo"]
