"""The cluster soak's two halves that decide nothing about how it runs (issue 23): a seeded fault
schedule, and the independent checker of what the fakes received.

The schedule is drawn up front from one seed, so a failing run is replayed with `--seed`: the
same faults, on the same targets, at the same offsets from the start of the traffic (the
interleavings differ, as they would in any replay against real processes). Faults never leave
fewer than one gateway untouched, and never overlap on one target.

The checker knows only what was submitted (each turn's text, whether a 202 or the fake's log
says it was accepted), what the fake platform received (every send request, duplicates
included, in arrival order, with its idempotency key) and, from the database, which sessions
exist and what is left in the queue. It asserts SPEC 12 and 15 across the cluster:

- every accepted turn answered exactly once: its reply carries one idempotency key (a second
  key would be a second run of the turn; the same key sent again is a possible duplicate of a
  send cut by a fault, counted and reported, as SPEC 12 allows), or it ended in one failure
  notice (SPEC 12: "one reply or one failure notice"; a turn cut by two restarts is given up).
  A notice does not quote its prompt, so it is matched by conversation: each conversation has
  as many notices (distinct keys) as accepted turns without a reply;
- a submission of unknown fate (its HTTP answer lost to a fault) answered at most once;
- replies of each conversation arrive in the order their turns were accepted;
- one session id per conversation;
- no queue entry left (pending or dead).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Literal

import attrs

FaultKind = Literal["kill", "stop", "restart", "pg"]
POSTGRES = "postgres"
# How the gateway's failure notices begin (`runtime/resume.py`, `runtime/agent.py`).
FAILURE_NOTICE = "Sorry, "
_KINDS: tuple[FaultKind, ...] = ("kill", "stop", "restart", "pg")
_WEIGHTS = (3, 3, 2, 1)
# After a fault's hold, a node needs a few seconds to be back and useful (start, join).
_RECOVERY_SECONDS = 4.0


@attrs.frozen
class Fault:
    at: float  # seconds after the traffic starts
    kind: FaultKind
    target: str  # a node's name, or POSTGRES
    hold: float  # kill: down before the restart; stop: before SIGCONT; pg: down before the start

    def describe(self) -> str:
        what = {"kill": "SIGKILL, start after", "stop": "SIGSTOP, SIGCONT after", "restart": "SIGTERM, start"}
        said = what.get(self.kind, "PostgreSQL stopped (immediate), start after")
        hold = f" {self.hold:.2f}s" if self.kind != "restart" else ""
        return f"t={self.at:7.2f}s  {self.target:<8}  {said}{hold}"


def schedule(seed: int, nodes: Sequence[str], seconds: float, *, mean_gap: float = 3.0) -> list[Fault]:
    """Faults over `seconds` of traffic, one every `mean_gap` seconds on average."""
    rng = random.Random(seed)
    busy_until = dict.fromkeys([*nodes, POSTGRES], 0.0)
    faults = []
    t = rng.uniform(1.0, mean_gap)
    while t < seconds:
        kind = rng.choices(_KINDS, _WEIGHTS)[0]
        hold = {"kill": rng.uniform(0.3, 3.0), "stop": rng.uniform(0.5, 5.0), "restart": 0.0}.get(
            kind, rng.uniform(0.2, 2.0)
        )
        free = [n for n in nodes if busy_until[n] <= t]
        target = None
        if kind == "pg":
            target = POSTGRES if busy_until[POSTGRES] <= t else None
        elif len(free) >= 2:  # one gateway stays untouched at every moment
            target = rng.choice(free)
        if target is not None:
            faults.append(Fault(round(t, 2), kind, target, round(hold, 2)))
            busy_until[target] = t + hold + _RECOVERY_SECONDS
        t += rng.expovariate(1 / mean_gap)
    return faults


@attrs.frozen
class Turn:
    """One submission: `index` orders it in its conversation (`to`); `accepted` False is a
    submission of unknown fate (no answer, or an error after it may have been written)."""

    to: str
    index: int
    text: str
    accepted: bool
    session_id: str | None = None
    turn_id: str | None = None  # from the 202 (HTTP): what the nodes' logs name


@attrs.frozen
class Sent:
    """One send request the fake platform received, in arrival order."""

    to: str
    text: str
    key: str | None


@attrs.define
class Verdict:
    failures: list[str] = attrs.Factory(list)
    counts: dict[str, int] = attrs.Factory(dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, what: str) -> None:
        self.failures.append(what)


def check(
    turns: Sequence[Turn],
    sent: Sequence[Sent],
    sessions: Sequence[tuple[str, str]],
    queue_left: int,
    waiting: Sequence[str] = (),
) -> Verdict:
    """`sessions`: (session id, conversation `to`) of every session in the database; `waiting`:
    what the database still holds to run (turns pending in a session, handed-off turns), each
    a failure once the cluster settled, named for the logs."""
    verdict = Verdict()
    keys: dict[str, set[str | None]] = defaultdict(set)
    sends_per_key: Counter[tuple[str, str | None]] = Counter()
    for s in sent:
        keys[s.text].add(s.key)
        sends_per_key[(s.text, s.key)] += 1
    by_text = {t.text: t for t in turns}
    accepted = [t for t in turns if t.accepted]
    notices = _notices(verdict, sent, set(by_text))
    unanswered = _answered(verdict, turns, keys)
    replied = {key: text for text, found in keys.items() if text in by_text for key in found}
    ended_in_notice = _noticed(verdict, unanswered, notices, replied)
    _in_order(verdict, accepted, sent, by_text)
    _one_session(verdict, accepted, sessions)
    for what in waiting:
        verdict.fail(f"left to run: {what}")
    if queue_left:
        verdict.fail(f"{queue_left} queue entr{'y' if queue_left == 1 else 'ies'} left in the database")
    verdict.counts = {
        "submitted": len(turns),
        "accepted": len(accepted),
        "unknown fate": len(turns) - len(accepted),
        "unknown fate answered": sum(1 for t in turns if not t.accepted and keys.get(t.text)),
        "answered": sum(1 for t in accepted if keys.get(t.text)),
        "ended in a failure notice": ended_in_notice,
        "send requests": len(sent),
        "duplicate sends (same key)": sum(n - 1 for n in sends_per_key.values()),
        "conversations": len({t.to for t in turns}),
        "sessions": len(sessions),
        "queue left": queue_left,
        "left to run": len(waiting),
    }
    return verdict


def _notices(verdict: Verdict, sent: Sequence[Sent], asked: set[str]) -> dict[str, set[str | None]]:
    """Failure notices (distinct keys) by conversation; any other text nobody asked for fails."""
    notices: dict[str, set[str | None]] = defaultdict(set)
    for s in sent:
        if s.text in asked:
            continue
        if s.text.startswith(FAILURE_NOTICE):
            notices[s.to].add(s.key)
        else:
            verdict.fail(f"a message nobody asked for: {s.text!r} to {s.to}")
    return notices


def _noticed(
    verdict: Verdict,
    unanswered: dict[str, list[Turn]],
    notices: dict[str, set[str | None]],
    replied: dict[str | None, str],
) -> int:
    """`replied`: the text each reply's key answered, to name a turn that got a notice too."""
    ended = 0
    for to in sorted(set(unanswered) | set(notices)):
        waiting, told = unanswered.get(to, []), notices.get(to, set())
        if len(waiting) == len(told):
            ended += len(told)
            continue
        for turn in waiting:
            named = f", turn {turn.turn_id}" if turn.turn_id else ""
            verdict.fail(
                f"accepted turn never answered: {turn.text!r} (to {to}{named}; {len(told)} failure notice(s) there)"
            )
        if len(told) > len(waiting):
            also = [f"{replied[k]!r}" for k in sorted(told, key=str) if k in replied]
            both = f"; a reply too, under the same key: {', '.join(also)}" if also else ""
            verdict.fail(f"{len(told)} failure notice(s) to {to} for {len(waiting)} unanswered turn(s){both}")
    return ended


def _answered(verdict: Verdict, turns: Sequence[Turn], keys: dict[str, set[str | None]]) -> dict[str, list[Turn]]:
    """Fails turns answered twice; returns the accepted turns without a reply, by conversation."""
    unanswered: dict[str, list[Turn]] = defaultdict(list)
    for turn in turns:
        found = keys.get(turn.text, set())
        if turn.accepted and not found:
            unanswered[turn.to].append(turn)
        elif len(found) > 1:
            said = "accepted turn" if turn.accepted else "submission of unknown fate"
            verdict.fail(f"{said} answered {len(found)} times: {turn.text!r}, keys {sorted(map(str, found))}")
    return unanswered


def _in_order(verdict: Verdict, accepted: Sequence[Turn], sent: Sequence[Sent], by_text: dict[str, Turn]) -> None:
    """The first send of each accepted turn's reply, per conversation, in acceptance order."""
    wanted = {t.text for t in accepted}
    seen: set[str] = set()
    last: dict[str, Turn] = {}
    for s in sent:
        if s.text not in wanted or s.text in seen:
            continue
        seen.add(s.text)
        turn = by_text[s.text]
        before = last.get(turn.to)
        if before is not None and before.index > turn.index:
            ids = f" (turns {turn.turn_id}, {before.turn_id})" if turn.turn_id else ""
            verdict.fail(f"out of order in {turn.to}: reply to {turn.text!r} arrived after {before.text!r}{ids}")
        last[turn.to] = turn


def _one_session(verdict: Verdict, accepted: Sequence[Turn], sessions: Sequence[tuple[str, str]]) -> None:
    per_conversation: dict[str, set[str]] = defaultdict(set)
    for session_id, to in sessions:
        per_conversation[to].add(session_id)
    for turn in accepted:
        if turn.session_id is not None:
            per_conversation[turn.to].add(turn.session_id)
    for to, ids in sorted(per_conversation.items()):
        if len(ids) > 1:
            verdict.fail(f"conversation {to} has {len(ids)} sessions: {sorted(ids)}")
