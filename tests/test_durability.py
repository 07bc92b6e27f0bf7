"""Durable writes (storage/atomic.py): the order of the syscalls that makes a crash at any
instant leave the old file or the new one, recorded by a spy on `os` at the module's seam.

What must hold, for every atomic write: the new bytes go to a temporary name in the same folder,
that file is fsynced, the temporary is renamed over the target (never the target written in
place), and then the folder is fsynced so the rename itself survives a power cut. A crash before
the rename leaves the old file; after it, the new one, whole, because its data was on disk first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import pytest
from test_queue import T0, make_entry

from trio_gateway.log import EventLog
from trio_gateway.storage import atomic
from trio_gateway.storage.queue import DeliveryQueue

Op = tuple[str, ...]


@attrs.define
class OsSpy:
    """`os` as `storage/atomic.py` sees it, recording what reaches the disk: each fsync (by the
    path its descriptor is open on) and each rename, in order. Everything else is the real os."""

    real: ModuleType
    ops: list[Op] = attrs.Factory(list)
    broken_disk: bool = False  # every fsync fails with EIO

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def fsync(self, fd: int) -> None:
        self.ops.append(("fsync", self.real.readlink(f"/proc/self/fd/{fd}")))
        if self.broken_disk:
            raise OSError(5, "Input/output error (injected)")
        self.real.fsync(fd)

    def replace(self, src: Any, dst: Any) -> None:
        self.ops.append(("rename", str(src), str(dst)))
        self.real.replace(src, dst)

    def rename(self, src: Any, dst: Any) -> None:
        self.ops.append(("rename", str(src), str(dst)))
        self.real.rename(src, dst)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> OsSpy:
    recorder = OsSpy(os)
    monkeypatch.setattr(atomic, "os", recorder)
    return recorder


def assert_atomic_replace(ops: list[Op], target: Path, *, sync_dir: bool = True) -> None:
    """`ops` are: fsync(temporary) → rename(temporary, target) [→ fsync(target's folder)]."""
    folder = str(target.parent)
    assert ops, "nothing was fsynced or renamed: the write is not durable"
    [first, *rest] = ops
    assert first[0] == "fsync", f"the file's data must be fsynced before anything else, got {ops}"
    temporary = first[1]
    assert temporary != str(target), "the target itself was written in place"
    assert os.path.dirname(temporary) == folder, "the temporary must live in the target's folder (one filesystem)"
    assert rest[:1] == [("rename", temporary, str(target))], f"the fsynced temporary must be renamed next, got {ops}"
    assert rest[1:] == ([("fsync", folder)] if sync_dir else []), f"then the folder fsynced, got {ops}"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("existing", [False, True], ids=["new", "replacing"])
def test_atomic_write_bytes_fsyncs_then_renames_then_fsyncs_the_folder(
    tmp_path: Path, spy: OsSpy, existing: bool
) -> None:
    target = tmp_path / "state.json"
    if existing:
        target.write_bytes(b"old\n")
    atomic.atomic_write_bytes(target, b"new\n")
    assert_atomic_replace(spy.ops, target)
    assert target.read_bytes() == b"new\n"
    assert leftovers(tmp_path) == []


def test_atomic_write_bytes_without_sync_dir_still_fsyncs_the_file_before_the_rename(
    tmp_path: Path, spy: OsSpy
) -> None:
    target = tmp_path / "entry.json"
    atomic.atomic_write_bytes(target, b"{}\n", sync_dir=False)
    assert_atomic_replace(spy.ops, target, sync_dir=False)


@pytest.mark.parametrize("sync_dir", [True, False])
def test_atomic_create_bytes_fsyncs_then_renames(tmp_path: Path, spy: OsSpy, sync_dir: bool) -> None:
    target = tmp_path / "pending" / "d-1.json"  # its folder made on first use
    atomic.atomic_create_bytes(target, b'{"id":"d-1"}\n', sync_dir=sync_dir)
    assert_atomic_replace(spy.ops, target, sync_dir=sync_dir)
    assert target.read_bytes() == b'{"id":"d-1"}\n'
    assert leftovers(target.parent) == []


def test_durable_rename_fsyncs_both_folders_after_the_move(tmp_path: Path, spy: OsSpy) -> None:
    src, dst = tmp_path / "pending" / "a.json", tmp_path / "failed" / "a.json"
    src.parent.mkdir()
    src.write_bytes(b"x")
    atomic.durable_rename(src, dst)
    assert spy.ops == [
        ("rename", str(src), str(dst)),
        ("fsync", str(dst.parent)),
        ("fsync", str(src.parent)),
    ]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, spy: OsSpy) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old\n")
    spy.broken_disk = True
    with pytest.raises(OSError, match="injected"):
        atomic.atomic_write_bytes(target, b"new\n")
    assert target.read_bytes() == b"old\n"
    assert leftovers(tmp_path) == []


async def test_an_enqueued_delivery_is_fsynced_and_renamed_and_its_folder_fsynced_before_enqueue_returns(
    tmp_path: Path, spy: OsSpy
) -> None:
    """The queue's hot path keeps the same discipline: the entry's file is on disk and named in
    its folder, durably, before the caller is told it is enqueued."""
    queue = DeliveryQueue(tmp_path, atomic.inline, EventLog())
    entry = make_entry(queue, T0)
    await queue.enqueue(entry)
    target = queue.pending_path(entry.id)
    assert_atomic_replace(spy.ops, target)
    assert json.loads(target.read_bytes())["id"] == entry.id
