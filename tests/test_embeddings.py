"""Decode correctness, backbones, the extractor and the embedding job on both backends."""

from __future__ import annotations

import json
import re
import threading
import uuid
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fixtures_embed import (
    make_dicom,
    real_image_files,
    spool_files,
)
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_windowing
from sqlalchemy import select, text

from surveillance.analysis.embed import run_embed, spool_path
from surveillance.analysis.embeddings.backbones import (
    Backbone,
    ConvAEBackbone,
    create_backbone,
)
from surveillance.analysis.embeddings.decode import DecodeError, decode_for_embedding
from surveillance.analysis.embeddings.extractor import Extractor
from surveillance.cli import main
from surveillance.core.config import EXAMPLE_CONFIG
from surveillance.core.errors import ConfigError, UsageError
from surveillance.store import Store
from surveillance.store.embeddings import ABANDONED, RETRY_MARKER
from surveillance.store.engine import make_engine
from surveillance.store.models import EmbeddingRow, ImageSpoolRow
from surveillance.store.types import utcnow

SIZE = 128


def _testfile(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None
    return str(path)


# ---- decode ------------------------------------------------------------------------


def test_rescale_then_window_matches_pydicom(tmp_path: Path) -> None:
    stored = np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) % 1200
    path = make_dicom(
        tmp_path / "ct.dcm",
        stored,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=100,
        WindowWidth=400,
    )
    out = decode_for_embedding(path, size=SIZE)
    hu = stored * 2.0 - 1000.0
    # By hand, PS3.3 C.11.2.1.2.1 (LINEAR): clip(((x - (c - 0.5)) / (w - 1) + 0.5), 0, 1)
    expected = np.clip((hu - 99.5) / 399.0 + 0.5, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # and pydicom's own windowing, rescaled from its output range to [0, 1]
    from pydicom import dcmread

    ds = dcmread(path)
    windowed = apply_windowing(apply_modality_lut(ds.pixel_array, ds), ds)
    y_min, y_max = 0 * 2 - 1000, (2**12 - 1) * 2 - 1000
    np.testing.assert_allclose(out, (windowed - y_min) / (y_max - y_min), atol=1e-6)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    stored = np.tile(np.arange(SIZE, dtype=np.uint16) * 16, (SIZE, 1))
    window = {"WindowCenter": 1024, "WindowWidth": 2048}
    m2 = decode_for_embedding(make_dicom(tmp_path / "m2.dcm", stored, **window), size=SIZE)
    m1 = decode_for_embedding(
        make_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", **window), size=SIZE
    )
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m2[0, 0] < m2[0, -1]  # brighter with larger stored values in MONOCHROME2 only
    assert m1[0, 0] > m1[0, -1]


def test_multiframe_uses_the_middle_frame(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 4096, size=(3, SIZE, SIZE), dtype=np.uint16)
    window = {"WindowCenter": 2048, "WindowWidth": 4096}
    multi = decode_for_embedding(make_dicom(tmp_path / "mf.dcm", frames, **window), size=SIZE)
    middle = decode_for_embedding(make_dicom(tmp_path / "f1.dcm", frames[1], **window), size=SIZE)
    first = decode_for_embedding(make_dicom(tmp_path / "f0.dcm", frames[0], **window), size=SIZE)
    np.testing.assert_array_equal(multi, middle)
    assert not np.allclose(multi, first)


def test_voi_lut_sequence_is_applied(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    stored = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 256).astype(np.uint16)
    path = make_dicom(tmp_path / "lut.dcm", stored, bits_stored=12)
    from pydicom import dcmread

    ds = dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = (255 - np.arange(256, dtype="<u2")).tobytes()  # an inverting LUT
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    out = decode_for_embedding(path, size=SIZE)
    np.testing.assert_allclose(out, (255 - stored) / 255.0, atol=1e-6)


@pytest.mark.parametrize(
    "compressed",
    [
        pytest.param("MR_small_RLE.dcm", id="rle"),
        pytest.param("MR_small_jp2klossless.dcm", id="jpeg2000-lossless"),
        pytest.param("MR_small_jpeg_ls_lossless.dcm", id="jpeg-ls-lossless"),
    ],
)
def test_lossless_compressed_decodes_like_uncompressed(compressed: str) -> None:
    plain = decode_for_embedding(_testfile("MR_small.dcm"))
    np.testing.assert_array_equal(decode_for_embedding(_testfile(compressed)), plain)
    assert plain.shape == (128, 128) and plain.dtype == np.float32
    assert plain.min() >= 0.0 and plain.max() <= 1.0


def test_broken_files_raise_decode_error(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="cannot decode pixel data"):
        decode_for_embedding(_testfile("MR_truncated.dcm"))
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(DecodeError, match="not a DICOM file"):
        decode_for_embedding(junk)


# ---- backbones ---------------------------------------------------------------------


def test_conv_ae_is_seeded_and_deterministic() -> None:
    images = torch.from_numpy(
        np.stack([decode_for_embedding(_testfile(n)) for n in ("CT_small.dcm", "MR_small.dcm")])
    )
    a = Extractor(ConvAEBackbone(seed=0), device="cpu", num_workers=0).embed_images(images)
    b = Extractor(ConvAEBackbone(seed=0), device="cpu", num_workers=0).embed_images(images)
    c = Extractor(ConvAEBackbone(seed=1), device="cpu", num_workers=0).embed_images(images)
    assert a.shape == (2, 512) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert ConvAEBackbone(seed=0).version != ConvAEBackbone(seed=1).version
    # Golden values: weights come from numpy's PCG64, so these hold on every machine.
    np.testing.assert_allclose(a.sum(axis=1), [GOLDEN_CT, GOLDEN_MR], rtol=1e-4)


GOLDEN_CT = 252.962067
GOLDEN_MR = 291.889526


def test_backbone_registry() -> None:
    with pytest.raises(ConfigError, match="known backbones: bbsd, conv-ae, exported, torchscript"):
        create_backbone("resnet-imaginary")
    with pytest.raises(TypeError, match="already registered"):

        class Again(Backbone, key="conv-ae"):
            pass

    with pytest.raises(ConfigError, match="backbone 'conv-ae'"):
        create_backbone("conv-ae", weights="x")


def _tiny_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.AdaptiveAvgPool2d(1))


def test_torchscript_backbone(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    with warnings.catch_warnings():  # torch deprecates TorchScript; users still have files
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.trace(_tiny_net(), torch.zeros(1, 1, 32, 32)), str(path))
    backbone = create_backbone("torchscript", path=path, image_size=32)
    assert backbone.dim == 4 and len(backbone.version) == 16
    out = Extractor(backbone, device="cpu", num_workers=0).embed_images(np.zeros((3, 32, 32)))
    assert out.shape == (3, 4)
    with pytest.raises(ConfigError, match="does not exist"):
        create_backbone("torchscript", path=tmp_path / "missing.pt")


def test_exported_program_backbone(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(
        _tiny_net(), (torch.zeros(2, 1, 32, 32),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(path))
    backbone = create_backbone("exported", path=path, image_size=32)
    images = np.random.default_rng(0).random((5, 32, 32))
    out = Extractor(backbone, device="cpu", num_workers=0, batch_size=3).embed_images(images)
    assert out.shape == (5, 4) and backbone.name == "exported"


def test_extractor_workers_match_in_process_and_isolate_bad_files(tmp_path: Path) -> None:
    paths = [Path(_testfile(n)) for n in ("CT_small.dcm", "MR_small.dcm", "MR_truncated.dcm")]
    backbone = ConvAEBackbone()
    with_workers = Extractor(backbone, device="auto", batch_size=2, num_workers=1)
    assert with_workers.device.type in ("cpu", "cuda")
    results = with_workers.embed_files(paths)
    assert [r.index for r in results] == [0, 1, 2]
    assert results[2].vector is None and "cannot decode" in (results[2].error or "")
    direct = Extractor(backbone, device="cpu", num_workers=0).embed_images(
        np.stack([decode_for_embedding(p) for p in paths[:2]])
    )
    got = np.stack([r.vector for r in results[:2] if r.vector is not None])
    np.testing.assert_allclose(got, direct, rtol=1e-3, atol=1e-4)  # CUDA AMP tolerance


# ---- the embedding job ------------------------------------------------------------------


def _claimed_rows(db: Store) -> dict[int, ImageSpoolRow]:
    with db.sessions.scope() as s:
        rows = s.scalars(select(ImageSpoolRow)).all()
        s.expunge_all()
        return {r.id: r for r in rows}


def test_spool_paths_cannot_escape(spool_dir: Path) -> None:
    assert spool_path(spool_dir, "ab12.dcm") == spool_dir / "ab12.dcm"
    assert spool_path(spool_dir, "2026/07/ab12.dcm") == spool_dir / "2026" / "07" / "ab12.dcm"
    for bad in ("../x.dcm", "/etc/passwd", "a/../b", "", ".hidden", "a\\b"):
        with pytest.raises(UsageError):
            spool_path(spool_dir, bad)


def test_embed_job_writes_rows_deletes_files_and_survives_bad_files(
    store: Store,
    spool_dir: Path,
) -> None:
    rng = np.random.default_rng(0)
    good = real_image_files(spool_dir, 3, rng)
    second = real_image_files(spool_dir, 1, rng)[0]  # another instance of study 0
    bad = spool_dir / f"{uuid.uuid4().hex}.dcm"
    bad.write_bytes(b"\x00" * 200)
    studies = [f"study-{i}".ljust(64, "0") for i in range(4)]
    spool_files(store, [*zip(studies, good, strict=False), (studies[0], second), (studies[3], bad)])

    extractor = Extractor(ConvAEBackbone(), device="cpu", num_workers=0, batch_size=2)
    report = run_embed(store, extractor, spool_dir, claim_batch=3)
    assert (report.claimed, report.embedded, report.embeddings_new, report.failed) == (5, 4, 3, 1)
    assert [p.exists() for p in (*good, second, bad)] == [False] * 4 + [True]

    with store.sessions.scope() as s:
        rows = s.execute(
            select(EmbeddingRow.extractor, EmbeddingRow.extractor_version, EmbeddingRow.dim)
        ).all()
    assert sorted(rows) == [("conv-ae", "1.s0.r128", 512)] * 3
    spool = _claimed_rows(store)
    failed = [r for r in spool.values() if r.error]
    assert len(failed) == 1 and failed[0].embedded_at is None and "DecodeError" in failed[0].error
    assert store.embeddings.spool_status().failed == 1

    again = run_embed(store, extractor, spool_dir)  # the bad file is not retried
    assert again.claimed == 0


def test_interrupted_claim_is_retried_once_then_abandoned(
    store: Store,
    spool_dir: Path,
) -> None:
    (path,) = real_image_files(spool_dir, 1, np.random.default_rng(1))
    spool_files(store, [("s" * 64, path)])
    assert len(store.embeddings.claim_spool("dies-1", 10)) == 1
    assert store.embeddings.claim_spool("other", 10) == []  # a live claim is respected
    later = utcnow() + timedelta(seconds=1)
    assert len(store.embeddings.claim_spool("dies-2", 10, stale_before=later)) == 1
    (row,) = _claimed_rows(store).values()
    assert row.error == RETRY_MARKER and row.claimed_by == "dies-2"
    assert (
        store.embeddings.claim_spool("third", 10, stale_before=utcnow() + timedelta(seconds=2))
        == []
    )
    (row,) = _claimed_rows(store).values()
    assert row.error == ABANDONED


@pytest.mark.postgres
def test_skip_locked_claims_never_overlap(pg_url: str) -> None:
    from surveillance.store.migrations import upgrade

    engine = make_engine(pg_url)
    upgrade(engine)
    first, second = Store(engine), Store(make_engine(pg_url))
    try:
        spool_files(first, [(f"st{i}".ljust(64, "x"), Path(__file__)) for i in range(120)])
        # A claimer holding row locks in an open transaction is skipped, not waited for.
        with first.engine.connect() as holder:
            tx = holder.begin()
            locked = (
                holder.execute(text("SELECT id FROM image_spool ORDER BY id LIMIT 10 FOR UPDATE"))
                .scalars()
                .all()
            )
            skipped: list[int] = []
            worker = threading.Thread(
                target=lambda: skipped.extend(
                    c.id for c in second.embeddings.claim_spool("skipper", 5)
                )
            )
            worker.start()
            worker.join(timeout=20)
            blocked = worker.is_alive()
            tx.rollback()  # unblocks a claimer that (wrongly) waited
            worker.join(timeout=20)
            assert not blocked, "claim_spool waited for locked rows instead of skipping them"
            assert len(skipped) == 5 and set(skipped).isdisjoint(locked)

        claims: dict[str, list[int]] = {"a": [], "b": []}
        barrier = threading.Barrier(2, timeout=30)

        def claimer(name: str, store_: Store) -> None:
            barrier.wait()
            for _ in range(100):
                got = store_.embeddings.claim_spool(name, 7)
                if not got:
                    return
                claims[name] += [c.id for c in got]

        threads = [
            threading.Thread(target=claimer, args=("a", first)),
            threading.Thread(target=claimer, args=("b", second)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert set(claims["a"]).isdisjoint(claims["b"])
        assert len(claims["a"]) + len(claims["b"]) == 115
        assert claims["a"] and claims["b"]
    finally:
        first.close()
        second.close()


# ---- CLI --------------------------------------------------------------------------------


def _main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``surveillance ARGS`` in-process with the real exit-code mapping."""
    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_embed_run_and_benchmarks(
    tmp_path: Path,
    spool_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "surveillance.toml"
    example = EXAMPLE_CONFIG.read_text()
    config.write_text(re.sub(r"(?m)^spool_dir = .*$", f"spool_dir = '{spool_dir}'", example))
    assert str(spool_dir) in config.read_text()
    db = f"sqlite:///{tmp_path / 's.db'}"
    base = ["--config", str(config), "--db-url", db]
    assert _main([*base, "db", "upgrade"], capsys)[0] == 0
    fresh = Store(make_engine(db))
    try:
        files = real_image_files(spool_dir, 2, np.random.default_rng(2))
        spool_files(fresh, [("c" * 64, p) for p in files])
    finally:
        fresh.close()
    code, out, err = _main([*base, "embed", "run", "--workers", "0", "--json"], capsys)
    assert code == 0, err
    figures = json.loads(out)
    assert figures["claimed"] == 2 and figures["embeddings_new"] == 1
    status = json.loads(_main([*base, "embed", "status", "--json"], capsys)[1])
    assert status["embedded"] == 2 and status["pending"] == 0

    code, _, err = _main([*base, "embed", "run", "--backbone", "torchscript"], capsys)
    assert code == 2 and "--weights" in err and "Traceback" not in err

    drift = ["bench", "drift", "--sizes", "40", "--dim", "8", "--permutations", "20", "--json"]
    code, out, err = _main(drift, capsys)
    assert code == 0, err
    assert json.loads(out)["runs"][0]["n"] == 40
    code, out, err = _main(["bench", "embed", "--images", "6", "--workers", "0", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["failed"] == 0


def test_scheduled_embedding_job_uses_the_configured_backbone(
    store: Store,
    spool_dir: Path,
    settings: Any,
) -> None:
    from surveillance.analysis.embed import run_embedding_job

    files = real_image_files(spool_dir, 2, np.random.default_rng(3))
    spool_files(store, [(f"study-{i}".ljust(64, "0"), p) for i, p in enumerate(files)])
    configured = settings.model_copy(
        update={
            "embedding": settings.embedding.model_copy(update={"decode_workers": 0}),
            "dicom": settings.dicom.model_copy(update={"spool_dir": spool_dir}),
        }
    )
    result = run_embedding_job(store, configured, as_of=utcnow())
    assert (result["embedded"], result["failed"]) == (2, 0)
    with store.sessions.scope() as s:
        extractors = s.execute(select(EmbeddingRow.extractor)).scalars().all()
    # the configured backbone, plus the image-quality fingerprint of each study (issue 9)
    assert sorted(extractors) == ["conv-ae", "conv-ae", "image-quality", "image-quality"]
