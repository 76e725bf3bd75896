"""Decode DICOM pixel data in a child process with a time limit and a memory cap.

Pixel data from the network is untrusted input to C decoders (JPEG, JPEG 2000,
JPEG-LS, RLE). A crafted stream can declare a 65535 x 65535 x 1000-frame image
in a few hundred bytes (a decompression bomb), loop for a long time, or crash
the decoder. None of that may take the daemon down, so decoding happens in a
long-lived worker process:

* the worker caps its own address space with ``resource.setrlimit(RLIMIT_AS)``
  at ``memory_bytes`` above what it uses after start-up, so an allocation past
  the cap fails with MemoryError inside the worker (Linux; elsewhere the cap is
  best effort);
* before decoding, the size the header declares (rows x columns x samples x
  frames x bytes, :func:`connectors.dicom_files.check_pixel_budget`) is checked
  against ``max_decoded_bytes`` (default: the memory cap), so an obvious bomb is
  refused without allocating anything;
* the parent waits at most ``timeout_s``; then it kills the worker and starts
  a fresh one for the next file. A worker that dies (signal, segfault) is
  replaced the same way;
* the worker is a fresh interpreter (``python -c``, talking over a socket
  pair), not a fork of the threaded daemon and not a ``multiprocessing``
  spawn, which would re-import the caller's ``__main__``.

Every failure is a :class:`PixelDecodeError` with a sentence saying what
happened; the parent process is never affected.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from connectors.dicom_files import check_pixel_budget
from surveillance.core.errors import InvalidRecord

if TYPE_CHECKING:  # numpy is imported in the worker only after its limits are set
    import numpy as np

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MEMORY_BYTES = 2 * 1024**3
_START_TIMEOUT_S = 60.0
_IMPORT_ROOT = str(Path(__file__).resolve().parents[1])
_WORKER_CODE = (
    "import sys\n"
    "from multiprocessing.connection import Connection\n"
    "from connectors.pixel_guard import _worker_main\n"
    "_worker_main(Connection(int(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3]))\n"
)


class PixelDecodeError(Exception):
    """The pixel data could not be decoded within the limits (or at all)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _address_space_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[0])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _worker_main(conn: Connection, memory_bytes: int, max_decoded_bytes: int = 0) -> None:
    """Worker loop: receive a path, answer ("ok", array) or ("error", reason)."""
    budget = max_decoded_bytes if max_decoded_bytes > 0 else memory_bytes
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import resource
    import warnings

    import numpy  # noqa: F401  (loaded before the cap is measured)
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    warnings.simplefilter("ignore")  # decoder warnings are not errors here
    if hasattr(resource, "RLIMIT_AS") and memory_bytes > 0:
        cap = _address_space_bytes() + memory_bytes
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    conn.send(("ready", None))
    while True:
        try:
            path = conn.recv()
        except EOFError:
            return
        if path is None:
            return
        try:
            ds = dcmread(path, force=False)
            try:
                check_pixel_budget(ds, budget)
            except InvalidRecord as exc:
                raise PixelDecodeError(
                    f"the header declares too many pixels: {exc.reason}"
                ) from exc
            array = ds.pixel_array
            conn.send(("ok", array))
        except PixelDecodeError as exc:
            conn.send(("error", exc.reason))
        except MemoryError:
            conn.send(
                ("error", f"decoding needed more than the memory cap of {memory_bytes} bytes")
            )
        except InvalidDicomError as exc:
            conn.send(("error", f"not a DICOM file: {exc}"))
        except Exception as exc:  # decoders raise anything on a malformed stream
            conn.send(("error", f"cannot decode the pixel data: {type(exc).__name__}: {exc}"))


class PixelGuard:
    """A worker process that decodes pixel data within limits. Thread-safe.

    ``max_decoded_bytes`` is the pixel budget checked on the header before a
    decode (default, and upper bound: ``memory_bytes``).

    >>> with PixelGuard(timeout_s=30, memory_bytes=2 * 1024**3) as guard:
    ...     array = guard.decode(path)
    """

    def __init__(
        self,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        max_decoded_bytes: int | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"'timeout_s' must be > 0, got {timeout_s}")
        if memory_bytes < 16 * 1024**2:
            raise ValueError(f"'memory_bytes' must be >= 16 MiB, got {memory_bytes}")
        if max_decoded_bytes is not None and max_decoded_bytes < 1:
            raise ValueError(f"'max_decoded_bytes' must be >= 1, got {max_decoded_bytes}")
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self.max_decoded_bytes = min(max_decoded_bytes or memory_bytes, memory_bytes)
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self.restarts = 0

    def _start(self) -> Connection:
        # A fresh interpreter, not multiprocessing: no fork of a threaded daemon,
        # and no re-import of whatever __main__ module started us.
        parent_sock, child_sock = socket.socketpair()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (_IMPORT_ROOT, os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        try:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _WORKER_CODE,
                    str(child_sock.fileno()),
                    str(self.memory_bytes),
                    str(self.max_decoded_bytes),
                ],
                pass_fds=(child_sock.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except OSError as exc:
            parent_sock.close()
            raise PixelDecodeError(f"cannot start the pixel decoder process: {exc}") from exc
        finally:
            child_sock.close()
        conn = Connection(parent_sock.detach())
        self._process, self._conn = process, conn
        if not conn.poll(_START_TIMEOUT_S):
            self._discard(restart=False)
            raise PixelDecodeError("the pixel decoder process did not start")
        try:
            conn.recv()
        except (EOFError, OSError) as exc:
            code = process.wait(10)
            self._discard(restart=False)
            raise PixelDecodeError(
                f"the pixel decoder process failed to start (exit code {code})"
            ) from exc
        return conn

    def _discard(self, *, restart: bool = True) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait(10)
            if restart:
                self.restarts += 1

    def decode(self, path: Path | str) -> np.ndarray:
        """The pixel array of the DICOM file at ``path``, or PixelDecodeError."""
        with self._lock:
            conn = self._conn or self._start()
            try:
                conn.send(str(path))
                if not conn.poll(self.timeout_s):
                    self._discard()
                    raise PixelDecodeError(
                        f"decoding took longer than {self.timeout_s:g} s; the decoder was stopped"
                    )
                status, value = conn.recv()
            except (EOFError, OSError) as exc:
                code = self._process.wait(10) if self._process is not None else None
                self._discard()
                raise PixelDecodeError(
                    f"the decoder process died (exit code {code}) on this pixel data"
                ) from exc
            if status != "ok":
                raise PixelDecodeError(str(value))
            return value

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(BrokenPipeError, OSError):
                    self._conn.send(None)
                if self._process is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self._process.wait(5)
            self._discard(restart=False)

    def __enter__(self) -> PixelGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_pixels(
    path: Path | str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
    max_decoded_bytes: int | None = None,
) -> np.ndarray:
    """One file in a throw-away worker (use :class:`PixelGuard` for many files)."""
    with PixelGuard(
        timeout_s=timeout_s, memory_bytes=memory_bytes, max_decoded_bytes=max_decoded_bytes
    ) as guard:
        return guard.decode(path)


__all__ = [
    "DEFAULT_MEMORY_BYTES",
    "DEFAULT_TIMEOUT_S",
    "PixelDecodeError",
    "PixelGuard",
    "decode_pixels",
]
