"""The shipped deployment files as the tools that run them read them (issue 24):
`systemd-analyze verify` on the systemd unit, where systemd-analyze is installed. On systemd
252 (Debian 12, this suite's machines) it names every directive that version would ignore,
which is how `Type=notify-reload` was found to degrade to `Type=simple` there."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "trio-gateway.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_finds_nothing_to_ignore_in_the_unit(tmp_path: Path) -> None:
    # verify also checks that ExecStart's program exists: point it at one that does (this
    # Python), keeping every other line as shipped.
    shipped = UNIT.read_text()
    assert "ExecStart=/opt/trio-gateway/bin/trio-gateway gateway start" in shipped
    unit = tmp_path / UNIT.name
    unit.write_text(shipped.replace("/opt/trio-gateway/bin/trio-gateway", sys.executable))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # Lines about other units (a container's own /etc/systemd) are not ours to judge.
    ours = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]
    assert ours == []
    assert result.returncode == 0, result.stderr
