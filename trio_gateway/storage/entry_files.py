"""One delivery entry on disk: its file names, reading and parsing it, and moving a bad file
aside. The file queue (`queue.py`) and its crash recovery (`recovery.py`) share these; nothing
here holds state.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from pathlib import Path

import cattrs

from trio_gateway.log import EventLog
from trio_gateway.policy.entry import DeliveryEntry, entry_from_json, entry_to_json
from trio_gateway.storage.atomic import compact_json, durable_rename


def inflight_name(entry_id: str, pid: int, send_started_at: dt.datetime | None) -> str:
    if send_started_at is None:
        return f"{entry_id}.{pid}.json"
    return f"{entry_id}.{pid}.{int(send_started_at.timestamp() * 1000)}.json"


def parse_inflight_name(name: str) -> tuple[str, int, dt.datetime | None] | None:
    """(id, claimer pid, send started at) of `<id>.<pid>[.<ms>].json`; None for anything else."""
    parts = name.removesuffix(".json").split(".")
    if not name.endswith(".json") or len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[1:]):
        return None
    started = None if len(parts) == 2 else dt.datetime.fromtimestamp(int(parts[2]) / 1000, dt.UTC)
    return parts[0], int(parts[1]), started


class EntryGone(Exception):
    """The entry's file vanished under us (deleted by hand): skip it, it is not an error."""


def _what(exc: BaseException, _type: object) -> str:
    return str(exc.args[0]) if isinstance(exc, (TypeError, ValueError)) and exc.args else repr(exc)


def parse_entry(data: bytes, name: str) -> DeliveryEntry:
    """Raises ValueError (with the cattrs detail) for anything that is not a whole entry."""
    try:
        entry = entry_from_json(json.loads(data))
    except cattrs.BaseValidationError as exc:
        detail = "; ".join(cattrs.transform_error(exc, path="entry", format_exception=_what))
        raise ValueError(f"not a delivery entry: {detail}") from exc
    except Exception as exc:
        raise ValueError(f"not a delivery entry: {type(exc).__name__}: {exc}") from exc
    if entry.id != name.split(".", 1)[0]:
        raise ValueError(f"id {entry.id!r} does not match the file name")
    return entry


def read_entry_file(path: Path) -> bytes:
    """Raises FileNotFoundError, or ValueError for a name that is not a regular file (a
    directory called `<id>.json` must be quarantined, not crash every start)."""
    try:
        return path.read_bytes()
    except (IsADirectoryError, PermissionError) as exc:
        raise ValueError(f"not a readable entry file: {exc.strerror}") from None


def load_entry(path: Path) -> DeliveryEntry:
    """Raises FileNotFoundError, or ValueError for anything that is not a whole entry."""
    return parse_entry(read_entry_file(path), path.name)


def entry_bytes(entry: DeliveryEntry) -> bytes:
    return compact_json(entry_to_json(entry))


def entry_files(directory: Path) -> list[Path]:
    """Entry files of one folder, oldest id first. Dot-files are `store`'s temporary files."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [directory / n for n in sorted(names) if n.endswith(".json") and not n.startswith(".")]


def quarantine(quarantine_dir: Path, path: Path, reason: str, log: EventLog, *, name: str | None = None) -> None:
    """Move `path` aside under `name` (its own by default), never over an earlier file."""
    base = name or path.name
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    dest = quarantine_dir / base
    n = 1
    while dest.exists():
        dest = quarantine_dir / f"{base}.{n}"
        n += 1
    with contextlib.suppress(FileNotFoundError):
        durable_rename(path, dest)
        log.warn("QUARANTINE", f"Moved unparseable {base} to quarantine/{dest.name}: {reason}")
