"""Shared helpers for `scripts/bench_*.py`: the setup banner, timing, percentiles, tables, memory
readings from /proc, and a real gateway process on a temporary home.

Every benchmark measures a reference in the same run (the machine is shared and noisy), so its
figures are ratios or differences against something measured minutes apart, not seconds-old
absolutes from another day.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


# --- setup banner -----------------------------------------------------------------------------


def _version(module: str) -> str:
    try:
        mod = __import__(module)
    except ImportError:
        return "not installed"
    return str(getattr(mod, "__version__", "?"))


def _git_head() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.stdout.strip() or "?"


def _fs_of(path: Path) -> str:
    try:
        out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, timeout=5)
        fields = out.stdout.splitlines()[-1].split()
        return f"{fields[1]} ({fields[0]})"
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def banner(name: str, params: dict[str, Any]) -> None:
    """Print what a reader needs to judge the figures: versions, machine, parameters, date."""
    load = os.getloadavg()
    rows = [
        ("benchmark", name),
        ("date", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")),
        ("commit", _git_head()),
        ("python", platform.python_version()),
        ("trio", _version("trio")),
        ("httpx", _version("httpx")),
        ("httpcore", _version("httpcore")),
        ("httpx2", _version("httpx2")),
        ("httpcore2", _version("httpcore2")),
        ("cpus", str(os.cpu_count())),
        ("load avg (1/5/15 min)", " / ".join(f"{x:.2f}" for x in load)),
        ("platform", platform.platform()),
        ("temp dir fs", _fs_of(Path(tempfile.gettempdir()))),
    ]
    rows += [(f"param {k}", str(v)) for k, v in params.items()]
    width = max(len(k) for k, _ in rows)
    print(f"== {name} ==")
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}")
    print(flush=True)


# --- numbers ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]. NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """A small Markdown table, printed and returned (so a README can take it as is)."""
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    if title:
        lines.append(f"### {title}")
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    print()
    return text


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# --- memory -----------------------------------------------------------------------------------


def proc_status_kb(pid: int, field: str) -> int:
    """`VmRSS`, `VmHWM` (peak RSS) ... from /proc/<pid>/status, in kB; 0 where unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_mb(pid: int | None = None) -> float:
    return proc_status_kb(pid or os.getpid(), "VmRSS") / 1024.0


def peak_rss_mb(pid: int | None = None) -> float:
    return proc_status_kb(pid or os.getpid(), "VmHWM") / 1024.0


# --- temporary homes and a real gateway process ----------------------------------------------


@contextmanager
def temp_home(prefix: str = "bench-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_config(home: Path, config: dict[str, Any]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "gateway.json").write_text(json.dumps(config, indent=2))


class GatewayProcess:
    """`trio-gateway --home H gateway start --port 0` as a child process, found through
    `gateway.state.json` (pid, port) and `gateway.token`, as the CLI finds it."""

    def __init__(self, home: Path, *, extra_args: Sequence[str] = (), env: dict[str, str] | None = None) -> None:
        self.home = home
        self.extra_args = list(extra_args)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.token: str = ""
        self.log_path = home / "bench-gateway.stderr"
        self.model_url = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> float:
        """Start and wait until `/healthz` answers; returns the seconds that took."""
        exe = VENV_BIN / "trio-gateway"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "trio_gateway"]
        cmd += ["--home", str(self.home), "gateway", "start", "--port", "0", *self.extra_args]
        t0 = time.perf_counter()
        with self.log_path.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=self.env)
        self.wait_ready(timeout)
        return time.perf_counter() - t0

    def wait_ready(self, timeout: float) -> None:
        import httpx2

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: {self.stderr_tail()}")
            state = self.read_state()
            if state and state.get("port"):
                self.port = int(state["port"])
                try:
                    r = httpx2.get(f"{self.base_url}/healthz", timeout=1.0)
                    if r.status_code == 200 and r.json().get("status") == "ok":
                        token_path = self.home / "gateway.token"
                        self.token = token_path.read_text().strip() if token_path.exists() else ""
                        return
                except httpx2.HTTPError:
                    pass
            time.sleep(0.02)
        raise TimeoutError(f"gateway not healthy after {timeout}s: {self.stderr_tail()}")

    def read_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.home / "gateway.state.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time. Only our own child."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def have_module(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


async def poll_until(predicate: Any, within: float, every: float = 0.01) -> bool:
    """Poll `predicate()` from outside the code under test (which offers no event for it);
    False if it did not hold within `within` seconds."""
    import trio

    with trio.move_on_after(within):
        while not predicate():  # noqa: ASYNC110 - observing state that has no event to wait on
            await trio.sleep(every)
        return True
    return False


@asynccontextmanager
async def gateway_on_fake_model(
    fake: Any, config_for: Callable[[str], dict[str, Any]]
) -> AsyncIterator[GatewayProcess]:
    """A loopback fake model server (`fake`, served in this trio run so its counters can be
    read) and a fresh gateway process on a temp home configured by `config_for(model_url)`.
    `gp.model_url` is the fake's base URL. Both are stopped on exit."""
    import trio

    from trio_gateway.sim.fake_model import serve_fake_model

    async with trio.open_nursery() as nursery:
        model_url = await nursery.start(serve_fake_model, fake)
        with temp_home("bench-gateway-") as home:
            write_config(home, config_for(model_url))
            gp = GatewayProcess(home)
            gp.model_url = model_url
            try:
                await trio.to_thread.run_sync(gp.start, 60.0)
                yield gp
            finally:
                await trio.to_thread.run_sync(gp.stop)
        nursery.cancel_scope.cancel()
