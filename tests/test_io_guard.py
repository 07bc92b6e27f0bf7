"""The testing kit's guard against file I/O on the Trio thread (issue 25, build item 1):
caught by what was called, never by how long it took."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio

from trio_gateway.channels.registry import load_config
from trio_gateway.storage.atomic import in_thread, inline
from trio_gateway.testing.io_guard import guarded

pytest_plugins = ["pytester"]


async def test_the_gateways_read_on_the_loop_is_caught_with_its_task(tmp_path: Path) -> None:
    path = tmp_path / "gateway.json"
    path.write_text("{}")

    async def reload_config() -> None:
        load_config(path)  # the gateway's code, reading a file on the Trio thread

    with guarded() as guard:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reload_config, name="reload_config")
    assert guard.found == [f"open({str(path)!r}) in task reload_config"]


async def test_the_same_read_in_a_thread_or_an_inline_runner_passes(tmp_path: Path) -> None:
    path = tmp_path / "gateway.json"
    path.write_text("{}")
    with guarded() as guard:
        await in_thread(functools.partial(load_config, path))  # another thread: as production does
        await inline(functools.partial(load_config, path))  # the harness's stand-in for that thread
    assert guard.found == []


async def test_a_tests_own_setup_and_anything_outside_a_guard_pass(tmp_path: Path) -> None:
    with guarded() as guard:
        (tmp_path / "x").write_text("{}")  # the test's own file: not the gateway's doing
    load_config(tmp_path / "x")
    assert guard.found == []


def test_the_fixture_fails_the_test_that_did_it(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["trio_gateway.testing.plugin"]')
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(
        """
        import pytest
        pytestmark = pytest.mark.usefixtures("no_file_io_on_the_loop")

        from trio_gateway.channels.registry import load_config

        async def test_reads_on_the_loop(tmp_path):
            (tmp_path / "f").write_text("{}")
            load_config(tmp_path / "f")

        async def test_stays_off_the_loop():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)  # the test ran; its teardown failed it
    result.stdout.fnmatch_lines(["*file I/O on the Trio thread:*", "*open(*f') in task *test_reads_on_the_loop*"])
