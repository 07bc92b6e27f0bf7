"""The pairing books (SPEC 15 "Access"): the code rules, expiry, the per-account limit,
approving and revoking, each on files (storage/access.py) and in PostgreSQL (cluster mode,
cluster/pg_pairing.py); on files, a corrupt file quarantined and no lost update when calls
race on one file."""

from __future__ import annotations

import datetime as dt
import errno
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from trio_gateway.cluster.db import Database
from trio_gateway.cluster.pg_pairing import PgPairingBook
from trio_gateway.cluster.schema import migrate
from trio_gateway.errors import BadRequestError, InsufficientStorageError, NotFoundError
from trio_gateway.log import EventLog, MemorySink
from trio_gateway.policy.pairing import CODE_ALPHABET, CODE_LENGTH, CODE_TTL, MAX_PENDING_PER_ACCOUNT
from trio_gateway.storage import access
from trio_gateway.storage.access import AccountRecord, FileAccessBook, new_code
from trio_gateway.storage.atomic import in_thread, inline

T0 = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


def codes(*fixed: str) -> Callable[[], str]:
    it = iter(fixed) if fixed else (f"CODE{n:04d}" for n in itertools.count())
    return lambda: next(it)


def book_at(root: Path, sink: MemorySink | None = None, make_code: Callable[[], str] = new_code) -> FileAccessBook:
    return FileAccessBook(root, inline, EventLog([sink or MemorySink()]), make_code)


Book = FileAccessBook | PgPairingBook
MakeBook = Callable[..., Book]


@pytest.fixture(params=["files", pytest.param("postgres", marks=pytest.mark.postgres)])
async def make_book(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeBook]:
    """`make_book(make_code, sink)`: a fresh book of the parameter's kind; on PostgreSQL, every
    book of one test shares its database (as nodes do)."""
    if request.param == "files":
        yield lambda make_code=new_code, sink=None: book_at(tmp_path, sink, make_code)
        return
    db = Database.create(request.getfixturevalue("pg_dsn"), statement_timeout=5, inline=True, max_size=2)
    await db.open()
    await db.run(migrate)
    yield lambda make_code=new_code, sink=None: PgPairingBook(db, EventLog([sink or MemorySink()]), make_code)
    db.pool.close()


def test_codes_are_eight_characters_without_look_alikes() -> None:
    made = {new_code() for _ in range(500)}
    assert len(made) == 500
    for code in made:
        assert len(code) == CODE_LENGTH == 8
        assert set(code) <= set(CODE_ALPHABET)
    assert not set("".join(made)) & set("0O1I")


async def test_one_code_message_per_sender_per_hour(make_book: MakeBook, autojump_clock: trio.abc.Clock) -> None:
    book = make_book(codes("AAAA2222", "BBBB3333"))
    first = await book.offer_code("telegram", "bot", "42", T0)
    assert first is not None
    assert first.code == "AAAA2222"
    assert first.expires_at == T0 + CODE_TTL
    for minutes in (1, 30, 59):
        assert await book.offer_code("telegram", "bot", "42", T0 + minutes * MINUTE) is None
    again = await book.offer_code("telegram", "bot", "42", T0 + 60 * MINUTE)
    assert again is not None
    assert again.code == "BBBB3333"
    # The expired code is gone: one live code per sender.
    assert [p.code for p in await book.pending("telegram", T0 + 61 * MINUTE)] == ["BBBB3333"]


async def test_codes_expire_after_an_hour(make_book: MakeBook, autojump_clock: trio.abc.Clock) -> None:
    book = make_book(codes("AAAA2222"))
    await book.offer_code("telegram", "bot", "42", T0)
    assert [p.sender for p in await book.pending(None, T0 + 59 * MINUTE)] == ["42"]
    assert await book.pending(None, T0 + 60 * MINUTE) == []
    with pytest.raises(NotFoundError, match="AAAA2222"):
        await book.approve("telegram", "AAAA2222", T0 + 60 * MINUTE)
    assert not await book.is_approved("telegram", "bot", "42")


async def test_at_most_three_live_codes_per_account(make_book: MakeBook, autojump_clock: trio.abc.Clock) -> None:
    book = make_book(codes())
    offered = [await book.offer_code("telegram", "bot", f"s{i}", T0 + i * MINUTE) for i in range(5)]
    assert [o is not None for o in offered] == [True] * MAX_PENDING_PER_ACCOUNT + [False, False]
    # Another account has its own three.
    assert await book.offer_code("telegram", "other", "s9", T0 + 5 * MINUTE) is not None
    # Expired codes do not count: once the first has expired, a new sender gets one.
    assert await book.offer_code("telegram", "bot", "s3", T0 + 59 * MINUTE) is None
    assert await book.offer_code("telegram", "bot", "s3", T0 + 60 * MINUTE) is not None
    # An approval frees a place at once.
    live = [p for p in await book.pending("telegram", T0 + 60 * MINUTE) if p.account_id == "bot"]
    assert [p.sender for p in live] == ["s1", "s2", "s3"]
    assert await book.offer_code("telegram", "bot", "s4", T0 + 60 * MINUTE) is None
    await book.approve("telegram", live[0].code, T0 + 60 * MINUTE)
    assert await book.offer_code("telegram", "bot", "s4", T0 + 60 * MINUTE) is not None


async def test_approve_finds_the_code_across_the_channels_accounts(
    make_book: MakeBook, autojump_clock: trio.abc.Clock
) -> None:
    sink = MemorySink()
    book = make_book(codes("AAAA2222", "BBBB3333", "CCCC4444"), sink)
    await book.offer_code("telegram", "bot1", "42", T0)
    await book.offer_code("telegram", "bot2", "43", T0 + MINUTE)
    await book.offer_code("discord", "main", "44", T0 + 2 * MINUTE)
    with pytest.raises(NotFoundError):  # a code of another channel
        await book.approve("telegram", "CCCC4444", T0 + 3 * MINUTE)
    approval = await book.approve("telegram", " bbbb3333 ", T0 + 3 * MINUTE)  # as typed
    assert (approval.account_id, approval.sender, approval.approved_at) == ("bot2", "43", T0 + 3 * MINUTE)
    assert await book.is_approved("telegram", "bot2", "43")
    assert not await book.is_approved("telegram", "bot1", "43")  # per account
    with pytest.raises(NotFoundError, match="approved"):
        await book.approve("telegram", "BBBB3333", T0 + 3 * MINUTE)
    assert [p.code for p in await book.pending(None, T0 + 3 * MINUTE)] == ["AAAA2222", "CCCC4444"]
    assert [(a.channel, a.account_id, a.sender) for a in await book.approvals(None)] == [("telegram", "bot2", "43")]
    # An approved sender is never offered a code.
    assert await book.offer_code("telegram", "bot2", "43", T0 + 2 * CODE_TTL) is None
    assert [e.fields.get("sender") for e in sink.tagged("ACCESS")][-1] == "43"


async def test_revoke(make_book: MakeBook, autojump_clock: trio.abc.Clock) -> None:
    book = make_book(codes("AAAA2222"))
    assert not await book.revoke("telegram", "bot", "42")
    await book.offer_code("telegram", "bot", "42", T0)
    await book.approve("telegram", "AAAA2222", T0)
    assert await book.revoke("telegram", "bot", "42")
    assert not await book.is_approved("telegram", "bot", "42")
    assert await book.approvals("telegram") == []
    # Revoked within the hour: no second code message that hour.
    assert await book.offer_code("telegram", "bot", "42", T0 + 30 * MINUTE) is None


async def test_changes_are_on_disk_for_the_next_process(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    book = book_at(tmp_path, make_code=codes("AAAA2222", "BBBB3333"))
    await book.offer_code("telegram", "bot", "42", T0)
    await book.offer_code("telegram", "bot", "43", T0)
    await book.approve("telegram", "AAAA2222", T0)
    path = tmp_path / "telegram" / "bot.json"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [p["code"] for p in json.loads(path.read_text())["pending"]] == ["BBBB3333"]
    again = book_at(tmp_path)
    assert await again.is_approved("telegram", "bot", "42")
    assert [p.code for p in await again.pending("telegram", T0)] == ["BBBB3333"]


@pytest.mark.parametrize("content", [b"{not json", b'{"approvals": [{"sender": 42}]}', b"[]", b"\xff\xfe"])
async def test_a_corrupt_file_is_quarantined_and_the_account_starts_empty(
    tmp_path: Path, autojump_clock: trio.abc.Clock, content: bytes
) -> None:
    sink = MemorySink()
    path = tmp_path / "telegram" / "bot.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    book = book_at(tmp_path, sink, make_code=codes("AAAA2222"))
    assert not await book.is_approved("telegram", "bot", "42")
    assert (tmp_path / "quarantine" / "telegram.bot.json").read_bytes() == content
    assert [e.level for e in sink.tagged("ACCESS")] == ["ERROR"]
    assert "starts with no approvals" in sink.tagged("ACCESS")[0].text()
    # The account works again from empty, and a second bad file does not overwrite the first.
    assert await book.offer_code("telegram", "bot", "42", T0) is not None
    path.write_bytes(b"{")
    assert await book.pending(None, T0) == []
    assert (tmp_path / "quarantine" / "telegram.bot.json.1").read_bytes() == b"{"


async def test_a_fifo_is_quarantined_not_waited_on(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    path = tmp_path / "telegram" / "bot.json"
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    book = book_at(tmp_path)
    assert not await book.is_approved("telegram", "bot", "42")
    assert not path.exists()


@pytest.mark.parametrize(("channel", "account"), [("../etc", "bot"), ("telegram", "../../x"), ("", "bot")])
async def test_names_that_are_paths_are_refused(tmp_path: Path, channel: str, account: str) -> None:
    book = book_at(tmp_path)
    with pytest.raises(BadRequestError, match="not a plain name"):
        await book.revoke(channel, account, "42")
    with pytest.raises(BadRequestError):
        await book.pending("../x", T0)


def test_a_record_round_trips() -> None:
    record = AccountRecord({"42": T0}, [("43", "AAAA2222", T0, T0 + CODE_TTL)], {"43": T0})
    assert AccountRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


class SlowReads(FileAccessBook):
    """Reads that take a while in their thread: a read-modify-write without the file's lock
    would lose the updates of the calls racing it."""

    def _read_sync(self, path: Path) -> AccountRecord:
        time.sleep(0.005)
        return super()._read_sync(path)


async def test_racing_calls_on_one_file_lose_no_update(tmp_path: Path) -> None:
    n = iter(range(100))
    book = SlowReads(tmp_path, in_thread, EventLog([MemorySink()]), make_code=lambda: f"CODE{next(n):04d}")
    async with trio.open_nursery() as nursery:
        for i in range(MAX_PENDING_PER_ACCOUNT):
            nursery.start_soon(book.offer_code, "telegram", "bot", f"s{i}", T0)
    live = await book.pending("telegram", T0)
    assert len(live) == MAX_PENDING_PER_ACCOUNT
    async with trio.open_nursery() as nursery:
        for p in live:
            nursery.start_soon(book.approve, "telegram", p.code, T0)
    assert sorted(a.sender for a in await book.approvals("telegram")) == ["s0", "s1", "s2"]
    assert await book.pending("telegram", T0) == []


@pytest.mark.postgres
async def test_two_nodes_hearing_strangers_at_once_give_three_codes_in_all(pg_dsn: str) -> None:
    """Real threads, two pools (two nodes): the count and the insert of one account's codes
    are one step under its advisory lock, so racing offers never make a fourth live code; an
    approval through one node is seen by the other with its next call."""
    dbs = [Database.create(pg_dsn, statement_timeout=5, max_size=4) for _ in range(2)]
    for db in dbs:
        await db.open()
    await dbs[0].run(migrate)
    n = itertools.count()
    nodes = [PgPairingBook(db, EventLog([MemorySink()]), lambda: f"CODE{next(n):04d}") for db in dbs]
    offered: list[object] = []

    async def stranger(i: int) -> None:
        offered.append(await nodes[i % 2].offer_code("telegram", "bot", f"s{i}", T0))

    try:
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(stranger, i)
        live = await nodes[0].pending("telegram", T0)
        assert len(live) == len([o for o in offered if o is not None]) == MAX_PENDING_PER_ACCOUNT
        await nodes[0].approve("telegram", live[0].code, T0)
        assert await nodes[1].is_approved("telegram", "bot", live[0].sender)
    finally:
        for db in dbs:
            await db.close()


async def test_a_sender_that_cannot_be_stored_is_neither_approved_nor_given_a_code(
    make_book: MakeBook, autojump_clock: trio.abc.Clock
) -> None:
    book = make_book(codes("AAAA2222", "BBBB3333"))
    for bad in ("\ud800", ""):
        assert await book.offer_code("telegram", "bot", bad, T0) is None
        assert not await book.is_approved("telegram", "bot", bad)
    # The account is untouched and still readable.
    assert await book.offer_code("telegram", "bot", "42", T0) is not None
    assert [p.sender for p in await book.pending("telegram", T0)] == ["42"]


async def test_a_change_by_another_book_is_seen_within_a_recheck(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """The access check answers from the record it read while that is younger than
    `RECHECK_SECONDS`; a change made elsewhere (by hand, the CLI with no gateway) is a new
    file, read at the first call after that."""
    gateway, other = book_at(tmp_path, make_code=codes("AAAA2222", "BBBB3333")), book_at(tmp_path)
    await gateway.offer_code("telegram", "bot", "42", T0)
    await gateway.offer_code("telegram", "bot", "43", T0)
    assert not await gateway.is_approved("telegram", "bot", "42")
    await other.approve("telegram", "AAAA2222", T0)
    await trio.sleep(1.0)  # the documented bound (README: seen within a second)
    assert await gateway.is_approved("telegram", "bot", "42")
    await other.approve("telegram", "BBBB3333", T0)
    await other.revoke("telegram", "bot", "42")
    assert await gateway.is_approved("telegram", "bot", "42")  # within the recheck: the record read
    await trio.sleep(1.0)  # the documented bound (README: seen within a second)
    assert not await gateway.is_approved("telegram", "bot", "42")
    assert await gateway.is_approved("telegram", "bot", "43")


async def test_a_change_through_the_book_is_seen_at_once(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """What the operator does through the gateway (HTTP, CLI, UI: all this book) holds at the
    next message, the fast path's record notwithstanding: a revoke is never a second late."""
    book = book_at(tmp_path, make_code=codes("AAAA2222"))
    await book.offer_code("telegram", "bot", "42", T0)
    assert not await book.is_approved("telegram", "bot", "42")  # the fast path now holds the record
    await book.approve("telegram", "AAAA2222", T0)
    assert await book.is_approved("telegram", "bot", "42")
    await book.revoke("telegram", "bot", "42")
    assert not await book.is_approved("telegram", "bot", "42")


async def test_a_change_past_the_files_cap_is_refused_and_the_file_kept(
    tmp_path: Path, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written past its cap, the file would read back as corrupt and be quarantined with every
    approval in it: the change is refused instead, naming the way out."""
    book = book_at(tmp_path, make_code=codes("AAAA2222", "BBBB3333"))
    await book.offer_code("telegram", "bot", "42", T0)
    await book.approve("telegram", "AAAA2222", T0)
    size = (tmp_path / "telegram" / "bot.json").stat().st_size
    monkeypatch.setattr(access, "MAX_ACCESS_FILE_BYTES", size + 10)
    with pytest.raises(InsufficientStorageError, match=r"access/telegram/bot\.json would pass .* revoke approvals"):
        await book.offer_code("telegram", "bot", "a-sender-with-a-long-id", T0)
    assert await book.is_approved("telegram", "bot", "42")
    assert await book.pending(None, T0) == []


async def test_a_full_disk_is_an_insufficient_storage_error(
    tmp_path: Path, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    book = book_at(tmp_path)
    monkeypatch.setattr(access, "atomic_write_bytes", full)
    with pytest.raises(InsufficientStorageError, match=r"access/telegram/bot\.json not written: No space left"):
        await book.offer_code("telegram", "bot", "42", T0)
    assert not (tmp_path / "telegram" / "bot.json").exists()
