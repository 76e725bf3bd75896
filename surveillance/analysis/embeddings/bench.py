"""Figures for sizing a site: MMD test time and embedding throughput.

This module imports numpy, torch and pydicom only (no database), so the MMD
part also runs in a separate virtual environment that holds alibi-detect
(whose numpy<2 cap keeps it out of ours)::

    python3 -m venv /tmp/alibi-venv
    /tmp/alibi-venv/bin/pip install alibi-detect==0.13.0 torch==2.13.0
    PYTHONPATH=. /tmp/alibi-venv/bin/python -m surveillance.analysis.embeddings.bench --alibi

Both sides test the same seeded data: ``numpy.random.default_rng(seed)``
float32 standard normals (reference) and the same plus 0.05 (window); the
``data_checksum`` field shows they are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Uncompressed monochrome files shipped with pydicom (CT 128², MR 64², MR 300x484).
BENCH_FILES = ("CT_small.dcm", "MR_small.dcm", "examples_overlay.dcm")


def bench_data(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference ``(n, dim)`` and a slightly shifted window, float32, seeded."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    y = rng.standard_normal((n, dim), dtype=np.float32) + np.float32(0.05)
    return x, y


def _timed(run: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def bench_ours(n: int, dim: int = 512, permutations: int = 100, seed: int = 0) -> dict[str, Any]:
    """Our MMD (fit + score) on ``n`` vs ``n`` rows."""
    from detectors.mmd import MMDDetector

    x, y = bench_data(n, dim, seed)
    detector = MMDDetector(n_permutations=permutations, seed=seed, min_samples=2, device="auto")
    seconds, result = _timed(lambda: detector.fit(x).score(y))
    return {
        "impl": "surveillance MMDDetector",
        "n": n,
        "dim": dim,
        "permutations": permutations,
        "seconds": round(seconds, 3),
        "p_value": result.p_value,
        "mmd2": result.statistic,
        "device": str(detector.device),
        "data_checksum": float(np.float64(x.sum()) + np.float64(y.sum())),
    }


def alibi_available() -> bool:
    try:
        import alibi_detect  # noqa: F401
    except ImportError:
        return False
    return True


def bench_alibi(n: int, dim: int = 512, permutations: int = 100, seed: int = 0) -> dict[str, Any]:
    """alibi-detect's ``MMDDrift`` (pytorch backend) on the same data: predict time."""
    from alibi_detect.cd import MMDDrift

    x, y = bench_data(n, dim, seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    detector = MMDDrift(
        x, backend="pytorch", p_val=0.05, n_permutations=permutations, device=device
    )
    seconds, result = _timed(lambda: detector.predict(y))
    return {
        "impl": "alibi-detect MMDDrift (pytorch)",
        "n": n,
        "dim": dim,
        "permutations": permutations,
        "seconds": round(seconds, 3),
        "p_value": float(result["data"]["p_val"]),
        "mmd2": float(result["data"]["distance"]),
        "device": device,
        "data_checksum": float(np.float64(x.sum()) + np.float64(y.sum())),
    }


def bench_drift(
    sizes: tuple[int, ...] = (1000, 10_000),
    dim: int = 512,
    permutations: int = 100,
    *,
    alibi: bool | None = None,
    alibi_max_n: int = 10_000,
) -> dict[str, Any]:
    """Our MMD at every size, and alibi-detect beside it when importable."""
    use_alibi = alibi_available() if alibi is None else alibi
    runs: list[dict[str, Any]] = []
    for n in sizes:
        ours = bench_ours(n, dim, permutations)
        runs.append(ours)
        if use_alibi and n <= alibi_max_n:
            theirs = bench_alibi(n, dim, permutations)
            theirs["speedup_of_ours"] = round(theirs["seconds"] / max(ours["seconds"], 1e-9), 1)
            runs.append(theirs)
    return {
        "benchmark": "mmd",
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "alibi_detect": "measured"
        if use_alibi
        else "not installed (pip install alibi-detect==0.13.0 in a separate venv; it caps numpy<2)",
        "runs": runs,
    }


def _bench_files(folder: Path, count: int) -> list[Path]:
    from pydicom.data import get_testdata_file

    sources = [get_testdata_file(name) for name in BENCH_FILES]
    paths = []
    for i in range(count):
        source = sources[i % len(sources)]
        if source is None:
            raise RuntimeError("pydicom's test files are missing")
        target = folder / f"bench-{i:06d}.dcm"
        shutil.copyfile(str(source), target)
        paths.append(target)
    return paths


def bench_embed(
    images: int = 1024,
    backbone: str = "conv-ae",
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Images/s of the forward pass alone, of decoding alone, and of the whole pipeline."""
    from surveillance.analysis.embeddings.backbones import create_backbone
    from surveillance.analysis.embeddings.decode import decode_for_embedding
    from surveillance.analysis.embeddings.extractor import Extractor

    net = create_backbone(backbone)
    extractor = Extractor(net, device=device, batch_size=batch_size, num_workers=num_workers)
    decode = partial(decode_for_embedding, size=net.image_size)
    with tempfile.TemporaryDirectory(prefix="surveillance-bench-") as tmp:
        paths = _bench_files(Path(tmp), images)
        decode_s, decoded = _timed(lambda: np.stack([decode(p) for p in paths]))
        tensor = torch.from_numpy(decoded)
        extractor.embed_images(tensor[:batch_size])  # warm-up
        forward_s, _ = _timed(lambda: extractor.embed_images(tensor))
        pipeline_s, results = _timed(lambda: extractor.embed_files(paths))
    failed = sum(r.vector is None for r in results)
    forward_rate = images / forward_s
    pipeline_rate = images / pipeline_s
    return {
        "benchmark": "embed",
        "backbone": f"{net.name}@{net.version}",
        "images": images,
        "files": list(BENCH_FILES),
        "image_size": net.image_size,
        "batch_size": batch_size,
        "decode_workers": extractor.num_workers,
        "device": str(extractor.device),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "forward_images_per_s": round(forward_rate, 1),
        "decode_images_per_s_one_process": round(images / decode_s, 1),
        "pipeline_images_per_s": round(pipeline_rate, 1),
        "pipeline_vs_forward": round(pipeline_rate / forward_rate, 3),
        "failed": failed,
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m surveillance.analysis.embeddings.bench``: MMD figures as JSON (no database)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--alibi", action="store_true", help="fail if alibi-detect is missing")
    parser.add_argument("--alibi-max-n", type=int, default=10_000)
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    figures = bench_drift(
        sizes,
        args.dim,
        args.permutations,
        alibi=True if args.alibi else None,
        alibi_max_n=args.alibi_max_n,
    )
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()


__all__ = ["BENCH_FILES", "bench_alibi", "bench_data", "bench_drift", "bench_embed", "bench_ours"]
