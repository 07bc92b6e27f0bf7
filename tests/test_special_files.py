"""Special files where regular ones belong (issue 25, finding 6): a FIFO, `/dev/zero` behind a
symlink, a directory, a file past its cap. Each is refused before it can block or fill memory."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from trio_gateway.storage.atomic import NotARegularFileError, read_regular


def test_a_regular_file_within_its_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b"{}")
    assert read_regular(path, 2) == b"{}"


def test_a_fifo_nobody_writes_is_refused_at_once(tmp_path: Path) -> None:
    """Before: opening it waited for a writer forever (a reload froze /healthz)."""
    path = tmp_path / "x.json"
    os.mkfifo(path)
    with pytest.raises(NotARegularFileError, match=re.escape("x.json is not a regular file (a FIFO)")):
        read_regular(path, 1024)


def test_dev_zero_behind_a_symlink_is_refused_before_a_byte_is_read(tmp_path: Path) -> None:
    """Before: read until memory ran out (2.7 GB in 1 s)."""
    path = tmp_path / "x.json"
    path.symlink_to("/dev/zero")
    with pytest.raises(NotARegularFileError, match="a character device"):
        read_regular(path, 1024)


def test_a_directory_and_a_file_past_its_cap_are_refused(tmp_path: Path) -> None:
    (tmp_path / "d.json").mkdir()
    with pytest.raises(NotARegularFileError, match=re.escape("d.json is not a regular file (a directory)")):
        read_regular(tmp_path / "d.json", 1024)
    (tmp_path / "big.json").write_bytes(b"x" * 1025)
    with pytest.raises(NotARegularFileError, match="larger than 1024 bytes"):
        read_regular(tmp_path / "big.json", 1024)


def test_a_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "gone.json", 1024)
