"""A throwaway PostgreSQL server for the test suite.

``PostgresServer`` runs ``initdb`` into a fresh directory under /tmp, starts the
server with ``pg_ctl`` on a free loopback port (trust authentication, user
``postgres``, fsync off), and removes everything again on ``stop()``::

    with PostgresServer() as server:
        server.create_database("t1")
        engine = sqlalchemy.create_engine(server.url("t1"))

Binaries are looked up like ``scripts/ensure_postgres.sh`` does (run that script
to install them): ``$SURVEILLANCE_PG_BINDIR``, the directory of ``initdb`` on
PATH, ``pg_config --bindir``, then the newest ``/usr/lib/postgresql/*/bin``.

``initdb`` refuses to run as root, so as root every server command runs as the
``postgres`` OS user through ``runuser``. That user must be able to reach the data
directory, which is why it lives under /tmp and never inside the checkout.
"""

import atexit
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg
from psycopg import sql

SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
SUPERUSER = "postgres"
HOST = "127.0.0.1"
_INSTALL_HINT = (
    "run `bash scripts/ensure_postgres.sh` (installs Debian's postgresql package as root), "
    "or set SURVEILLANCE_PG_BINDIR to a directory holding initdb, pg_ctl and postgres"
)


def _has_server_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in SERVER_BINARIES)


def _version_key(bindir: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin
    return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))


def find_bindir() -> Path:
    """Return the directory holding initdb, pg_ctl and postgres, or raise RuntimeError."""
    explicit = os.environ.get("SURVEILLANCE_PG_BINDIR")
    if explicit:
        if _has_server_binaries(Path(explicit)):
            return Path(explicit)
        raise RuntimeError(
            f"SURVEILLANCE_PG_BINDIR={explicit} does not contain initdb, pg_ctl and postgres"
        )

    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        )
        if result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()))
    candidates.extend(
        sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    )
    for candidate in candidates:
        if _has_server_binaries(candidate):
            return candidate
    raise RuntimeError(
        f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: {_INSTALL_HINT}"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One private PostgreSQL cluster: ``start()``, use ``url()``, ``stop()``."""

    def __init__(self, bindir: Path | None = None, start_attempts: int = 3) -> None:
        self._bindir = bindir
        self._start_attempts = start_attempts
        self._dir: Path | None = None
        self._port: int | None = None

    # -- properties ---------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._port is not None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("PostgresServer is not running: call start() first")
        return self._port

    @property
    def host(self) -> str:
        return HOST

    @property
    def user(self) -> str:
        return SUPERUSER

    @property
    def directory(self) -> Path:
        """Base directory: data/ (cluster), postgres.log, and the Unix socket."""
        if self._dir is None:
            raise RuntimeError("PostgresServer is not running: call start() first")
        return self._dir

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) for ``dbname`` on this server."""
        return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{self.port}/{dbname}"

    def conninfo(self, dbname: str = "postgres") -> str:
        """libpq connection string for psycopg / psql."""
        return psycopg.conninfo.make_conninfo(
            host=HOST, port=self.port, user=SUPERUSER, dbname=dbname, connect_timeout=10
        )

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> Self:
        """initdb + pg_ctl start; raises RuntimeError saying what went wrong."""
        if self.running:
            return self
        bindir = self._bindir or find_bindir()
        self._bindir = bindir
        as_root = os.geteuid() == 0
        runuser = self._runuser_prefix() if as_root else []

        base = Path(tempfile.mkdtemp(prefix="surveillance-pg-", dir="/tmp"))
        self._dir = base
        try:
            # The postgres user owns the directory; others may traverse it (socket).
            base.chmod(0o755)
            if as_root:
                account = pwd.getpwnam(SUPERUSER)
                os.chown(base, account.pw_uid, account.pw_gid)
            data = base / "data"
            initdb = [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER]
            initdb += ["-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]
            self._run([*runuser, *initdb], what="initdb")
            for attempt in range(1, self._start_attempts + 1):
                port = _free_port()
                options = f"-k {shlex.quote(str(base))} -p {port} -c listen_addresses={HOST}"
                options += " -c fsync=off"
                pg_ctl = [str(bindir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(data)]
                pg_ctl += ["-l", str(self.log_path), "-o", options]
                self.log_path.unlink(missing_ok=True)
                result = subprocess.run(
                    [*runuser, *pg_ctl], capture_output=True, text=True, check=False, cwd=base
                )
                if result.returncode == 0:
                    self._port = port
                    break
                log = self._log_tail()
                # Another process may have taken the port between probe and bind.
                if "Address already in use" in log and attempt < self._start_attempts:
                    continue
                raise RuntimeError(
                    f"pg_ctl start failed (exit {result.returncode}): "
                    f"{result.stdout}{result.stderr}\n--- {self.log_path} ---\n{log}"
                )
        except BaseException:
            # pg_ctl may give up waiting while the server still comes up.
            self._pg_ctl_stop(runuser, bindir, modes=("immediate",))
            self._remove_dir()
            raise
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Fast shutdown and removal of the whole directory; safe to call twice."""
        atexit.unregister(self.stop)
        if self._dir is None:
            return
        error: str | None = None
        if self._port is not None and self._bindir is not None:
            runuser = self._runuser_prefix() if os.geteuid() == 0 else []
            error = self._pg_ctl_stop(runuser, self._bindir, modes=("fast", "immediate"))
        self._port = None
        self._remove_dir()
        if error:
            raise RuntimeError(error)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------

    def create_database(self, name: str) -> None:
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, terminating connections still open to it."""
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))

    def list_databases(self) -> list[str]:
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            rows = conn.execute("SELECT datname FROM pg_database ORDER BY datname").fetchall()
        return [row[0] for row in rows]

    # -- internals --------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    @staticmethod
    def _runuser_prefix() -> list[str]:
        runuser = shutil.which("runuser", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
        if runuser is None:
            raise RuntimeError(
                f"running as root needs `runuser` (util-linux) to drop to the '{SUPERUSER}' user"
            )
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            raise RuntimeError(
                f"running as root needs a '{SUPERUSER}' OS user (initdb refuses root): "
                "run `bash scripts/ensure_postgres.sh`"
            ) from None
        return [runuser, "-u", SUPERUSER, "--"]

    def _run(self, command: list[str], what: str) -> None:
        result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=self._dir)
        if result.returncode != 0:
            raise RuntimeError(
                f"{what} failed (exit {result.returncode}): {shlex.join(command)}\n"
                f"{result.stdout}{result.stderr}"
            )

    def _pg_ctl_stop(self, runuser: list[str], bindir: Path, modes: tuple[str, ...]) -> str | None:
        """Try each shutdown mode in turn; return the last error, or None once stopped."""
        if self._dir is None or not (self._dir / "data" / "postmaster.pid").exists():
            return None
        error: str | None = None
        for mode in modes:
            pg_ctl = [str(bindir / "pg_ctl"), "stop", "-w", "-t", "60", "-m", mode]
            pg_ctl += ["-D", str(self._dir / "data")]
            result = subprocess.run(
                [*runuser, *pg_ctl], capture_output=True, text=True, check=False, cwd=self._dir
            )
            if result.returncode == 0:
                return None
            error = f"pg_ctl stop -m {mode} failed: {result.stdout}{result.stderr}"
        return error

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _remove_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
