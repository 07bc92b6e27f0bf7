"""Crash recovery of the file queue: the inflight claims of processes that are gone go back to
pending, with the send they had started written into the entry (SPEC 7). Whether a claimer is
gone is asked of the kernel, with care for reused pids.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import attrs

from trio_gateway.log import EventLog
from trio_gateway.storage.atomic import atomic_write_bytes, durable_rename
from trio_gateway.storage.entry_files import entry_bytes, entry_files, load_entry, parse_inflight_name


class Quarantine(Protocol):
    def __call__(self, path: Path, reason: str, *, name: str | None = None) -> None: ...


def _process_start(pid: int) -> tuple[float, bool] | None:
    """(start time since the epoch, is a zombie) of `pid`, from /proc; None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    except (OSError, StopIteration):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    started = int(boot.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return started, fields[0] == "Z"


def claimer_alive(pid: int, claimed_at: float) -> bool:
    """Is the process that claimed a file at `claimed_at` (its mtime) still running?

    A pid can be reused: a process that started after the claim was written is not the
    claimer. A zombie is dead for our purposes.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, but someone else's
    info = _process_start(pid)
    if info is None:
        return True
    started, zombie = info
    # /proc/stat's btime has one-second resolution: allow two seconds of slack.
    return not zombie and started <= claimed_at + 2.0


def remove_dead_temporaries(inflight_dir: Path, pid: int) -> None:
    # `.<id>.<pid>[.<ms>].json.XXXX.tmp`: a rewrite cut by a crash. The claimed file beside
    # it is whole (the rename never happened), so removing the temporary loses nothing.
    try:
        names = [n for n in os.listdir(inflight_dir) if n.startswith(".") and n.endswith(".tmp")]
    except FileNotFoundError:
        return
    for name in names:
        pid_text = name[1:].split(".")[1]
        path = inflight_dir / name
        with contextlib.suppress(FileNotFoundError, ValueError):
            if int(pid_text) != pid and not claimer_alive(int(pid_text), path.stat().st_mtime):
                path.unlink()


def return_to_pending(path: Path, dest: Path, send_started_at: dt.datetime | None) -> None:
    """A dead claimer's entry back to pending. A send it had started is written into the
    file first (in place, so a crash here only means doing it again), because the pending
    name cannot carry it."""
    if send_started_at is not None:
        entry = load_entry(path)
        if entry.send_started_at != send_started_at:
            atomic_write_bytes(path, entry_bytes(attrs.evolve(entry, send_started_at=send_started_at)))
    durable_rename(path, dest)


def recover_inflight(
    inflight_dir: Path,
    pid: int,
    held: set[str],
    pending_path: Callable[[str], Path],
    quarantine: Quarantine,
    log: EventLog,
) -> list[str]:
    """Ids moved back to pending: every inflight entry but those `held` by this process `pid`
    and those whose claimer is alive. Files that do not parse are quarantined."""
    remove_dead_temporaries(inflight_dir, pid)
    recovered = []
    for path in entry_files(inflight_dir):
        parsed = parse_inflight_name(path.name)
        if parsed is None:
            quarantine(path, "inflight file name is not <id>.<pid>[.<ms>].json")
            continue
        entry_id, claimer, started = parsed
        if claimer == pid and entry_id in held:
            continue
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            continue
        if claimer != pid and claimer_alive(claimer, mtime):
            continue
        try:
            return_to_pending(path, pending_path(entry_id), started)
        except FileNotFoundError:
            continue
        except ValueError as exc:
            quarantine(path, str(exc), name=f"{entry_id}.json")
            continue
        recovered.append(entry_id)
        log.warn("DELIVERY", f"Recovered entry {entry_id} claimed by pid {claimer}, which is gone")
    return recovered
