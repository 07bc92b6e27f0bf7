"""A throwaway PostgreSQL server for tests and benchmarks (cluster mode, SPEC 12).

`PgServer.start()` runs `initdb` into a fresh directory and `pg_ctl start` on a free loopback
port; `create_database()` gives each test its own database; `stop()` is `pg_ctl -m immediate`
(nothing in a test database is worth a checkpoint). `restart()` is a crash and a recovery
(`-m immediate`, then a start on the same port and data: what was committed survives), for the
cluster soak (`scripts/soak_cluster.py`). PostgreSQL refuses to run as root, so as
root every server command runs as the `postgres` user (`runuser -u postgres --`) in a
directory that user owns, which is not pytest's tmp dir (root-only, mode 0700).

Blocking, plain subprocess calls: this runs before and after trio, never inside it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import attrs

# Debian and Ubuntu put the server binaries here, out of PATH; PATH is tried first.
_DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
_SERVER_USER = "postgres"


def _find_bin_dir() -> Path | None:
    """The directory holding `initdb` and `pg_ctl`, newest version first; None when absent."""
    on_path = shutil.which("initdb")
    if on_path is not None and shutil.which("pg_ctl") is not None:
        return Path(on_path).parent
    for candidate in sorted(Path("/").glob(_DEBIAN_BIN_GLOB.lstrip("/")), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    return None


def missing_reason() -> str | None:
    """Why a server cannot be started here, or None when it can."""
    if _find_bin_dir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found; install the Debian package `postgresql`"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_SERVER_USER)
        except KeyError:
            return f"running as root and there is no {_SERVER_USER!r} user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and `runuser` is not available to drop to the postgres user"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@attrs.define
class PgServer:
    bin_dir: Path
    root: Path
    port: int
    user: str
    _dbs: int = 0

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @classmethod
    def start(cls, *, port: int | None = None) -> PgServer:
        bin_dir = _find_bin_dir()
        reason = missing_reason()
        if bin_dir is None or reason is not None:
            raise RuntimeError(reason or "no PostgreSQL binaries")
        root = Path(tempfile.mkdtemp(prefix="trio-gateway-pg-", dir="/tmp"))
        as_root = os.geteuid() == 0
        user = _SERVER_USER if as_root else pwd.getpwuid(os.geteuid()).pw_name
        if as_root:
            entry = pwd.getpwnam(_SERVER_USER)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        server = cls(bin_dir, root, port or _free_port(), user)
        try:
            server._run("initdb", "-D", str(server.data_dir), "-A", "trust", "-U", user, "--no-sync", "-E", "UTF8")
            server._launch()
        except BaseException:
            server.stop()
            raise
        return server

    def _launch(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
        # fsync stays on: the queue's durability figures would be meaningless without it.
        options += "-c max_connections=200 -c shared_buffers=32MB"
        self._run("pg_ctl", "start", "-D", str(self.data_dir), "-w", "-t", "30", "-o", options,
                  "-l", str(self.root / "server.log"))  # fmt: skip

    def halt(self) -> None:
        """Stop as a crash would (`-m immediate`: every connection cut, no checkpoint); the
        data stays for `launch()`, which recovers it from the WAL."""
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", "30")

    def launch(self) -> None:
        """Start the halted server again, on the same port and data."""
        self._launch()

    def restart(self) -> None:
        self.halt()
        self._launch()

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", _SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its DSN."""
        import psycopg

        self._dbs += 1
        name = name or f"t{self._dbs}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        """Immediate stop, then the directory goes: a test database holds nothing to keep."""
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", "30")
        shutil.rmtree(self.root, ignore_errors=True)


def main() -> None:
    """`python -m trio_gateway.sim.postgres`: a throwaway server to try cluster mode on
    one machine; prints the DSN, runs until Ctrl-C (or SIGTERM), then removes everything."""
    import signal
    import sys

    server = PgServer.start()
    try:
        dsn = server.create_database("gateway")
        print(f"export TRIO_GATEWAY_PG_DSN='{dsn}'", flush=True)
        print("PostgreSQL running; Ctrl-C stops it and deletes its data", file=sys.stderr, flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
