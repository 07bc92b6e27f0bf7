"""The cluster soak's checker and fault schedule (`sim/chaos.py`, issue 23): each invariant broken
on purpose is named, a clean run passes, and a seed always draws the same schedule."""

from __future__ import annotations

from trio_gateway.sim.chaos import POSTGRES, Sent, Turn, check, schedule

TURNS = [
    Turn("u1", 0, "a0", True, "s-1"),
    Turn("u1", 1, "a1-0", False),  # its answer was lost to a fault
    Turn("u1", 1, "a1-1", True, "s-1"),
    Turn("u2", 0, "b0", True),
]
CLEAN = [Sent("u1", "a0", "k1"), Sent("u2", "b0", "k3"), Sent("u1", "a1-1", "k2"), Sent("u1", "a1-1", "k2")]
SESSIONS = [("s-1", "u1"), ("s-2", "u2")]


def test_a_clean_run_passes_and_counts_what_it_saw() -> None:
    verdict = check(TURNS, CLEAN, SESSIONS, 0)
    assert verdict.failures == []
    assert verdict.counts["accepted"] == 3
    assert verdict.counts["unknown fate"] == 1
    assert verdict.counts["duplicate sends (same key)"] == 1  # the same key again: a possible duplicate


def test_each_broken_invariant_is_named() -> None:
    missing = check(TURNS, CLEAN[:2], SESSIONS, 0)
    assert missing.failures == ["accepted turn never answered: 'a1-1' (to u1; 0 failure notice(s) there)"]
    twice = check(TURNS, [*CLEAN, Sent("u1", "a0", "k9")], SESSIONS, 0)
    assert twice.failures == ["accepted turn answered 2 times: 'a0', keys ['k1', 'k9']"]
    unknown_twice = check(TURNS, [*CLEAN, Sent("u1", "a1-0", "x"), Sent("u1", "a1-0", "y")], SESSIONS, 0)
    assert unknown_twice.failures[0].startswith("submission of unknown fate answered 2 times: 'a1-0'")
    reordered = check(TURNS, [CLEAN[2], CLEAN[0], CLEAN[1]], SESSIONS, 0)
    assert reordered.failures == ["out of order in u1: reply to 'a0' arrived after 'a1-1'"]
    two_sessions = check(TURNS, CLEAN, [*SESSIONS, ("s-3", "u2")], 0)
    assert two_sessions.failures == ["conversation u2 has 2 sessions: ['s-2', 's-3']"]
    told_other = check([*TURNS, Turn("u1", 2, "a2", True, "s-9")], [*CLEAN, Sent("u1", "a2", "k4")], [], 0)
    assert told_other.failures == ["conversation u1 has 2 sessions: ['s-1', 's-9']"]
    left = check(TURNS, CLEAN, SESSIONS, 2)
    assert left.failures == ["2 queue entries left in the database"]
    stuck = check(TURNS, CLEAN, SESSIONS, 0, ["session s-1 (u1): 1 turn(s) pending"])
    assert stuck.failures == ["left to run: session s-1 (u1): 1 turn(s) pending"]
    stranger = check(TURNS, [*CLEAN, Sent("u2", "Hello there", "k5")], SESSIONS, 0)
    assert stranger.failures == ["a message nobody asked for: 'Hello there' to u2"]
    extra_notice = check(TURNS, [*CLEAN, Sent("u2", "Sorry, this request failed: boom", "k5")], SESSIONS, 0)
    assert extra_notice.failures == ["1 failure notice(s) to u2 for 0 unanswered turn(s)"]
    both = check(TURNS, [*CLEAN, Sent("u2", "Sorry, this request failed: boom", "k3")], SESSIONS, 0)
    assert both.failures == [
        "1 failure notice(s) to u2 for 0 unanswered turn(s); a reply too, under the same key: 'b0'"
    ]


def test_a_turn_may_end_in_one_failure_notice_instead_of_a_reply() -> None:
    """SPEC 12: every accepted turn ends in one reply or one failure notice (a turn cut by two
    restarts is given up); the notice does not quote the prompt, so it counts per conversation."""
    notice = Sent("u1", "Sorry, this request was not completed: it was interrupted by gateway restarts twice.", "k2")
    verdict = check(TURNS, [CLEAN[0], CLEAN[1], notice], SESSIONS, 0)
    assert verdict.failures == []
    assert verdict.counts["ended in a failure notice"] == 1


def test_a_seed_draws_one_schedule_that_always_leaves_a_node_untouched() -> None:
    nodes = ["a", "b", "c"]
    first = schedule(42, nodes, 600)
    assert first == schedule(42, nodes, 600)
    assert first != schedule(43, nodes, 600)
    assert {f.kind for f in first} == {"kill", "stop", "restart", "pg"}
    assert all(f.target == POSTGRES for f in first if f.kind == "pg")
    for fault in first:
        # At no moment are all nodes in a fault or its recovery (hold + 4 s).
        touched = {f.target for f in first if f.target != POSTGRES and f.at <= fault.at < f.at + f.hold + 4}
        assert len(touched) < len(nodes)
