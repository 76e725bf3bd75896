"""Batched embedding of DICOM files: decode in worker processes, forward on CPU or CUDA.

``device="auto"`` picks CUDA when torch sees a GPU, else the CPU; the code path
is the same. On CUDA the batches are decoded by DataLoader workers into pinned
memory, copied with ``non_blocking=True`` and run under ``torch.autocast``
(bfloat16 where supported, else float16); vectors always come back as float32
numpy arrays, equal to the CPU ones within mixed-precision tolerance.

A file that fails to decode never stops the batch: it comes back as a
:class:`FileResult` with ``error`` set. The decode function is pluggable (any
picklable callable ``path -> (S, S) float32 array``), so a guarded decoder that
runs each file in a child process with a timeout and a memory cap can replace
:func:`~surveillance.analysis.embeddings.decode.decode_for_embedding`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from detectors.mmd import resolve_device
from surveillance.analysis.embeddings.backbones import Backbone
from surveillance.analysis.embeddings.decode import decode_for_embedding

Decoder = Callable[[Path], np.ndarray]
_MAX_ERROR = 300


class ExtractionError(RuntimeError):
    """The decode workers failed as a whole (a worker died or hung)."""


@dataclass(frozen=True, slots=True)
class FileResult:
    """The embedding of ``paths[index]``, or why there is none."""

    index: int
    vector: np.ndarray | None
    error: str | None


def describe_error(exc: BaseException) -> str:
    """One line for the spool's ``error`` column: type and the start of the message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:_MAX_ERROR]


_Item = tuple[int, torch.Tensor | None, str | None]


class _DecodeDataset(Dataset[_Item]):
    def __init__(self, paths: Sequence[Path], decode: Decoder, size: int) -> None:
        self.paths = list(paths)
        self.decode = decode
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Item:
        try:
            image = np.asarray(self.decode(self.paths[index]), dtype=np.float32)
        except Exception as exc:  # any failure of one file is that file's error
            return index, None, describe_error(exc)
        if image.shape != (self.size, self.size):
            return index, None, f"decoder returned shape {image.shape}, expected {self.size}²"
        if not image.flags.writeable:  # torch refuses read-only buffers with a warning
            image = image.copy()
        return index, torch.from_numpy(image), None


@dataclass(slots=True)
class _Batch:
    indices: list[int]
    images: torch.Tensor | None  # (B, 1, S, S)
    failures: list[tuple[int, str]]

    def pin_memory(self) -> _Batch:
        """Called by the DataLoader's pin-memory thread on CUDA."""
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def _collate(items: list[_Item]) -> _Batch:
    ok = [(i, t) for i, t, _ in items if t is not None]
    failures = [(i, e or "unknown decode error") for i, t, e in items if t is None]
    images = torch.stack([t for _, t in ok]).unsqueeze(1) if ok else None
    return _Batch([i for i, _ in ok], images, failures)


def default_workers(device: torch.device) -> int:
    """Decode workers: up to 8 beside a GPU; on a CPU-only host, all cores but one."""
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    return max(0, min(4, cores - 1))


class Extractor:
    """Embeds images or DICOM files with one backbone on one device.

    Parameters
    ----------
    backbone:
        An image backbone (``backbone.needs_image``).
    device:
        ``"auto"`` (CUDA if available, else CPU) or a torch device string.
    batch_size:
        Images per forward pass.
    num_workers:
        Decode processes; ``0`` decodes in this process. ``None``:
        :func:`default_workers`.
    decode:
        ``path -> (S, S)`` float32 array in [0, 1]; picklable when
        ``num_workers > 0``. Default: :func:`decode_for_embedding` at the
        backbone's image size.
    amp:
        Mixed precision on CUDA (ignored on CPU).
    worker_timeout:
        Seconds a batch may take in the decode workers before the run fails.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        device: str | torch.device = "auto",
        batch_size: int = 64,
        num_workers: int | None = None,
        decode: Decoder | None = None,
        amp: bool = True,
        worker_timeout: float = 300.0,
    ) -> None:
        if not backbone.needs_image:
            raise ValueError(f"backbone {backbone.name!r} does not embed images")
        if batch_size < 1:
            raise ValueError(f"'batch_size' must be >= 1, got {batch_size!r}")
        self.backbone = backbone
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.num_workers = default_workers(self.device) if num_workers is None else num_workers
        if self.num_workers < 0:
            raise ValueError(f"'num_workers' must be >= 0, got {num_workers!r}")
        self.decode: Decoder = decode or partial(decode_for_embedding, size=backbone.image_size)
        self.amp = amp and self.device.type == "cuda"
        self.worker_timeout = worker_timeout
        backbone.to(self.device)

    @property
    def name(self) -> str:
        return self.backbone.name

    @property
    def version(self) -> str:
        return self.backbone.version

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def _autocast(self) -> Any:
        if not self.amp:
            return nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def forward(self, images: torch.Tensor) -> np.ndarray:
        """One batch ``(B, 1, S, S)`` (any device) -> ``(B, dim)`` float32 numpy."""
        non_blocking = self.device.type == "cuda" and images.is_pinned()
        x = images.to(self.device, dtype=torch.float32, non_blocking=non_blocking)
        with torch.inference_mode(), self._autocast():
            out = self.backbone.forward(x)
        return out.float().cpu().numpy()

    def embed_images(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Decoded images ``(N, S, S)`` or ``(N, 1, S, S)`` -> ``(N, dim)`` float32."""
        batch = torch.as_tensor(images, dtype=torch.float32)
        if batch.ndim == 3:
            batch = batch.unsqueeze(1)
        if batch.ndim != 4 or batch.shape[1] != 1:
            raise ValueError(f"images must be (N, S, S) or (N, 1, S, S), got {tuple(batch.shape)}")
        if batch.shape[0] == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        parts = [
            self.forward(batch[i : i + self.batch_size])
            for i in range(0, batch.shape[0], self.batch_size)
        ]
        return np.concatenate(parts, axis=0)

    def embed_files(self, paths: Sequence[Path]) -> list[FileResult]:
        """Decode and embed ``paths``; one result per path, in order.

        Raises :class:`ExtractionError` when a decode worker dies or hangs (the
        caller decides what happens to the whole batch).
        """
        if not paths:
            return []
        dataset = _DecodeDataset(paths, self.decode, self.backbone.image_size)
        workers = min(self.num_workers, len(paths))
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            timeout=self.worker_timeout if workers else 0,
            prefetch_factor=2 if workers else None,
        )
        results: list[FileResult] = []
        try:
            for batch in loader:
                results += [FileResult(i, None, e) for i, e in batch.failures]
                if batch.images is None:
                    continue
                vectors = self.forward(batch.images)
                results += [FileResult(i, vectors[k], None) for k, i in enumerate(batch.indices)]
        except RuntimeError as exc:
            raise ExtractionError(f"decode workers failed: {describe_error(exc)}") from exc
        results.sort(key=lambda r: r.index)
        return results


__all__ = ["ExtractionError", "Extractor", "FileResult", "default_workers", "describe_error"]
