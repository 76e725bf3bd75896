"""CLI commands for the embedding extractor, drift and embedding benchmarks.

* ``surveillance embed run [--limit N] [--backbone conv-ae] [--device auto] ...``
* ``surveillance embed status [--json]``
* ``surveillance bench drift [--json] [--sizes 1000,10000]``
* ``surveillance bench embed [--json] [--images N]``
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from surveillance.cli.app import AppContext, group, pass_app, print_json
from surveillance.core.errors import UsageError


def _options(backbone: str, weights: Path | None, arch: str | None, seed: int) -> dict[str, Any]:
    if backbone == "conv-ae":
        if weights is not None:
            raise UsageError("'--weights' is for the torchscript, exported, torchvision backbones")
        return {"seed": seed}
    if backbone in ("torchscript", "exported"):
        if weights is None:
            raise UsageError(f"the {backbone} backbone needs '--weights FILE'")
        return {"path": weights}
    if backbone == "torchvision":
        if weights is None or not arch:
            raise UsageError("the torchvision backbone needs '--arch NAME' and '--weights FILE'")
        return {"arch": arch, "path": weights}
    raise UsageError(
        f"backbone {backbone!r} does not embed images; BBSD vectors are written by every "
        "'embed run' unless --no-bbsd"
    )


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 2:
        raise UsageError(f"'--sizes' must be comma-separated integers >= 2, got {text!r}")
    return sizes


@click.command("run")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Most spool rows.")
@click.option("--backbone", default="conv-ae", show_default=True)
@click.option("--weights", type=click.Path(path_type=Path), default=None)
@click.option("--arch", default=None, help="torchvision architecture (with --weights).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Decode processes.")
@click.option("--no-bbsd", is_flag=True, help="Do not store the models' score vectors.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def embed_run(
    app: AppContext,
    limit: int | None,
    backbone: str,
    weights: Path | None,
    arch: str | None,
    seed: int,
    device: str,
    batch_size: int,
    workers: int | None,
    no_bbsd: bool,
    as_json: bool,
) -> None:
    """Embed the spooled DICOM instances, then delete their files."""
    from surveillance.analysis.embed import run_bbsd, run_embed
    from surveillance.analysis.embeddings.backbones import create_backbone
    from surveillance.analysis.embeddings.extractor import Extractor

    net = create_backbone(backbone, **_options(backbone, weights, arch, seed))
    try:
        extractor = Extractor(net, device=device, batch_size=batch_size, num_workers=workers)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    store = app.store()
    try:
        report = run_embed(store, extractor, app.settings.dicom.spool_dir, limit=limit)
        bbsd = 0 if no_bbsd else run_bbsd(store, store.registry.models())
    finally:
        store.close()
    figures = {
        "extractor": extractor.name,
        "version": extractor.version,
        "device": str(extractor.device),
        "claimed": report.claimed,
        "embedded": report.embedded,
        "embeddings_new": report.embeddings_new,
        "failed": report.failed,
        "files_deleted": report.files_deleted,
        "bbsd_new": bbsd,
    }
    if as_json:
        print_json(figures)
        return
    click.echo(
        f"{extractor.name}@{extractor.version} on {extractor.device}: "
        f"{report.claimed} claimed, {report.embedded} embedded "
        f"({report.embeddings_new} new study vectors), {report.failed} failed; "
        f"{bbsd} BBSD vectors"
    )


@click.command("status")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def embed_status(app: AppContext, as_json: bool) -> None:
    """Spool rows by state: pending, claimed, embedded, failed, retrying."""

    store = app.store()
    try:
        status = store.embeddings.spool_status()
    finally:
        store.close()
    if as_json:
        print_json(status)
        return
    click.echo(
        f"pending {status.pending}, claimed {status.claimed}, embedded {status.embedded}, "
        f"failed {status.failed}, retrying {status.retrying}"
    )


@click.command("drift")
@click.option("--sizes", default="1000,10000", show_default=True, help="n per side.")
@click.option("--dim", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--permutations", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench_drift(sizes: str, dim: int, permutations: int, as_json: bool) -> None:
    """MMD permutation test time, with alibi-detect's MMDDrift beside it if installed."""
    from surveillance.analysis.embeddings.bench import bench_drift as run

    figures = run(_sizes(sizes), dim, permutations)
    if as_json:
        print_json(figures)
        return
    click.echo(f"alibi-detect: {figures['alibi_detect']}")
    for r in figures["runs"]:
        extra = f" (ours is {r['speedup_of_ours']}x faster)" if "speedup_of_ours" in r else ""
        click.echo(
            f"{r['impl']}: {r['n']} vs {r['n']} x {r['dim']}-d, {r['permutations']} "
            f"permutations on {r['device']}: {r['seconds']:.3f} s{extra}"
        )


@click.command("embed")
@click.option("--images", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--backbone", default="conv-ae", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=None, help="Decode processes.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench_embed(
    images: int,
    backbone: str,
    batch_size: int,
    workers: int | None,
    device: str,
    as_json: bool,
) -> None:
    """Images/s: forward pass alone vs decode + embed on uncompressed DICOM."""
    from surveillance.analysis.embeddings.bench import bench_embed as run

    if backbone != "conv-ae":
        raise UsageError("bench embed measures the built-in conv-ae backbone only")
    try:
        figures = run(images, backbone, batch_size, workers, device)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if as_json:
        print_json(figures)
        return
    click.echo(
        f"{figures['backbone']} on {figures['device']}, {figures['images']} images, "
        f"{figures['decode_workers']} decode worker(s): "
        f"forward {figures['forward_images_per_s']}/s, "
        f"decode {figures['decode_images_per_s_one_process']}/s (one process), "
        f"pipeline {figures['pipeline_images_per_s']}/s "
        f"({100 * figures['pipeline_vs_forward']:.0f}% of forward)"
    )


def register(cli: click.Group) -> None:
    """Attach this area's commands to the root group."""
    embed = group("embed", "Image embeddings for drift detection.")
    bench = group("bench", "Figures for sizing a site (JSON with --json).")
    embed.add_command(embed_run)
    embed.add_command(embed_status)
    bench.add_command(bench_drift)
    bench.add_command(bench_embed)
