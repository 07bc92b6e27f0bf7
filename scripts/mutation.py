"""Curated mutants of the gateway's promises: each breaks one line that keeps a promise, and the
tests named beside it must fail. A mutant that survives is a promise nobody would notice losing.

    .venv/bin/python scripts/mutation.py                 # every mutant (about 15 minutes)
    .venv/bin/python scripts/mutation.py fence cursor    # those whose name contains a word
    .venv/bin/python scripts/mutation.py --list          # what there is, and where
    .venv/bin/python scripts/mutation.py --baseline      # first check the tests pass unmutated
    .venv/bin/python scripts/mutation.py --check         # after a refactor: every mutant still applies

Each mutant is a text substitution (file, the original snippet, its replacement) applied to a
copy of the tree in a temporary folder, never to this one: the tests run there (PYTHONPATH puts
the copy first, for the processes the tests start too), and the file is put back in `finally`
whatever happens. An original that is not found exactly once is an error, not a survivor: the
code moved, so the mutant must move with it. Not part of the five-minute suite: run it before a
release, and land each new promise with its mutant here (README, "Mutation score").
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import attrs

REPO = Path(__file__).resolve().parent.parent
# A mutant whose tests run past this is counted as killed by a hang, and named as such: the
# suite's own per-test bound should have failed it sooner.
RUN_SECONDS = 900.0
COPY_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache", "*.egg-info"
)


@attrs.frozen
class Mutant:
    name: str
    promise: str  # what the mutant breaks, in the operator's words
    file: str  # relative to the repository root
    original: str
    replacement: str
    tests: tuple[str, ...]  # test files or node ids that must fail on it


def m(name: str, promise: str, file: str, original: str, replacement: str, *tests: str) -> Mutant:
    return Mutant(name, promise, file, original, replacement, tuple(tests))


ATOMIC = "trio_gateway/storage/atomic.py"
PG_QUEUE = "trio_gateway/cluster/pg_queue.py"
TOOLS_HTTP = "trio_gateway/tools/http.py"
AUTH = "trio_gateway/http/auth.py"
WEIXIN = "trio_gateway/channels/weixin.py"
TELEGRAM = "trio_gateway/channels/telegram.py"
QUEUE = "trio_gateway/storage/queue.py"
WORKER = "trio_gateway/delivery/worker.py"

SEED_TEST = "tests/test_runtime.py::test_seed_incident_restart_completes_at_the_deadline"

MUTANTS: list[Mutant] = [
    # --- work/: the drain and the stall watchdog ---------------------------------------------
    m(
        "drain-deadline-infinite",
        "a drain is ONE deadline: with none, a stalled call holds a restart forever",
        "trio_gateway/work/drain.py",
        "trio.CancelScope(deadline=request.deadline)",
        'trio.CancelScope(deadline=float("inf"))',
        SEED_TEST,
    ),
    m(
        "drain-deadline-late",
        "generation 2 accepts work at the drain's deadline, not a second later",
        "trio_gateway/work/drain.py",
        "trio.CancelScope(deadline=request.deadline)",
        "trio.CancelScope(deadline=request.deadline + 1)",
        SEED_TEST,
    ),
    m(
        "drain-no-cancel",
        "at the deadline, the generation's work is cancelled",
        "trio_gateway/work/drain.py",
        "    work_scope.cancel()\n    return True, left",
        "    return True, left",
        SEED_TEST,
    ),
    m(
        "stall-threshold-doubled",
        "a call silent for thresholdSeconds is reported within one check interval",
        "trio_gateway/work/stall.py",
        "u.idle_for(now) >= config.threshold_seconds",
        "u.idle_for(now) >= 2 * config.threshold_seconds",
        "tests/test_runtime.py",
    ),
    m(
        "progress-ignored",
        "work that keeps moving is never judged stalled: progress restarts the stall clock",
        "trio_gateway/work/units.py",
        "        self.last_progress_at = now\n        if label is not None:",
        "        if label is not None:",
        "tests/test_runtime.py",
    ),
    m(
        "progress-not-passed-up",
        "a subagent run shows as moving (status, a drain's blockers) while a call inside it moves",
        "trio_gateway/work/units.py",
        "            parent.last_progress_at = now\n",
        "            pass\n",
        "tests/test_work_units.py",
    ),
    m(
        "abort-does-not-cancel",
        "an aborted model call is cut off and its upstream connection closed",
        "trio_gateway/work/units.py",
        "        self.scope.cancel(reason=reason)\n",
        "        pass\n",
        "tests/test_http_pool.py::test_aborting_the_model_unit_closes_upstream",
        "tests/test_runtime.py",
    ),
    # --- policy/: routing, backoff, the retry budget --------------------------------------------
    m(
        "routing-account-from-agent",
        "a reply's account comes from the same origin as its channel",
        "trio_gateway/policy/routing.py",
        'return Route(origin.channel, origin.to, origin.account_id or agent.account_id, "origin")',
        'return Route(origin.channel, origin.to, agent.account_id, "origin")',
        "tests/test_routing.py",
        "tests/test_gateway_delivery.py",
    ),
    m(
        "routing-fallback-first",
        "a reply goes back to the requester's channel, not the agent's first one",
        "trio_gateway/policy/routing.py",
        "if origin is not None and origin.channel:",
        "if origin is not None and origin.channel and origin.channel in agent.channels[:1]:",
        "tests/test_routing.py",
        "tests/test_gateway_delivery.py",
        "tests/test_inbound.py",
    ),
    m(
        "retry-after-ignored",
        "a channel's Retry-After is a floor: never back sooner than asked",
        "trio_gateway/policy/backoff.py",
        "wait = max(wait, min(retry_after, RETRY_AFTER_CEILING_SECONDS))",
        "wait = min(wait, min(retry_after, RETRY_AFTER_CEILING_SECONDS))",
        "tests/test_backoff.py",
    ),
    m(
        "max-attempts-off-by-one",
        "an entry is tried maxAttempts times, then dead-lettered",
        "trio_gateway/policy/backoff.py",
        "if attempts >= max_attempts:",
        "if attempts > max_attempts:",
        "tests/test_backoff.py",
    ),
    # --- storage/: atomic writes, the dedupe window, the queue -----------------------------------
    m(
        "create-no-fsync",
        "a queue file's data is on disk before its rename names it",
        ATOMIC,
        "                view = view[os.write(fd, view) :]\n            os.fsync(fd)\n",
        "                view = view[os.write(fd, view) :]\n",
        "tests/test_durability.py",
    ),
    m(
        "create-in-place",
        "a queue file appears whole or not at all (a rename, never an in-place write)",
        ATOMIC,
        "        os.rename(tmp, path)\n",
        "        path.write_bytes(data)\n        os.unlink(tmp)\n",
        "tests/test_durability.py",
    ),
    m(
        "write-no-fsync",
        "a replaced file's data is on disk before the rename (atomic_write_bytes)",
        ATOMIC,
        "            f.flush()\n            os.fsync(f.fileno())\n",
        "            f.flush()\n",
        "tests/test_durability.py",
    ),
    m(
        "write-in-place",
        "a replaced file is the old or the new one, never torn (atomic_write_bytes)",
        ATOMIC,
        "        os.replace(tmp_name, path)\n",
        "        path.write_bytes(data)\n        os.unlink(tmp_name)\n",
        "tests/test_durability.py",
    ),
    m(
        "write-no-dir-fsync",
        "the rename itself survives a power cut (the folder is fsynced)",
        ATOMIC,
        "    if sync_dir:\n        fsync_dir(directory)\n",
        "",
        "tests/test_durability.py",
    ),
    m(
        "dedupe-window-1",
        "a conversation remembers its last 256 message ids",
        "trio_gateway/storage/sessions.py",
        "_MAX_INBOUND_IDS = 256",
        "_MAX_INBOUND_IDS = 1",
        "tests/test_inbound_dedupe.py",
    ),
    m(
        "dedupe-off",
        "a message read again after a crash is not answered twice",
        "trio_gateway/storage/sessions.py",
        "        return inbound_id in self.inbound_ids\n",
        "        return False\n",
        "tests/test_inbound.py",
        "tests/test_inbound_dedupe.py",
    ),
    m(
        "queue-claims-early",
        "an entry is not sent before its next attempt is due",
        QUEUE,
        "        if entry.next_attempt_at > now:\n            os.rename(path, self.pending_path(entry_id))",
        "        if False:\n            os.rename(path, self.pending_path(entry_id))",
        "tests/test_queue.py",
    ),
    m(
        "pid-reuse-ignored",
        "a claim whose process died is recovered even when its pid was reused",
        "trio_gateway/storage/recovery.py",
        "    return not zombie and started <= claimed_at + 2.0",
        "    return not zombie",
        "tests/test_queue.py",
    ),
    m(
        "strict-json-nan",
        "NaN and Infinity in a request body are refused (no JSON allows them)",
        "trio_gateway/policy/strict_json.py",
        "value = json.loads(text, parse_constant=_refuse_constant, parse_float=parse_float)",
        "value = json.loads(text, parse_float=parse_float)",
        "tests/test_strict_json.py",
    ),
    # --- delivery/ ---------------------------------------------------------------------------------
    m(
        "permanent-not-counted",
        "a permanent rejection counts as the attempt it was",
        WORKER,
        'return await self._fail(claimed, outcome.reason or "permanent rejection", attempts=entry.attempts + 1)',
        'return await self._fail(claimed, outcome.reason or "permanent rejection", attempts=entry.attempts)',
        "tests/test_delivery.py",
    ),
    m(
        "pause-is-a-retry",
        "an auth failure pauses the account instead of burning each message's retries",
        WORKER,
        'if outcome.kind == "paused":',
        'if outcome.kind == "never":',
        "tests/test_delivery.py",
        "tests/test_inbound.py",
    ),
    m(
        "attempt-unbounded",
        "a send that never answers is cut at attemptTimeoutSeconds",
        WORKER,
        "with trio.move_on_after(timeout) as scope:",
        "with trio.CancelScope() as scope:",
        "tests/test_delivery.py",
        "tests/test_faults.py",
    ),
    m(
        "classify-4xx-retried",
        "a 4xx is permanent: it goes to failed/ instead of being retried",
        "trio_gateway/channels/base.py",
        '    if 400 <= status < 500:\n        return Outcome("permanent", reason, http_status=status)\n',
        "",
        "tests/test_classify.py",
    ),
    m(
        "classify-session-expired",
        "WeChat's errcode -14 pauses the account",
        WEIXIN,
        '    if code == ERRCODE_SESSION_EXPIRED:\n        return Outcome("paused"',
        '    if code == ERRCODE_SESSION_EXPIRED and status != 200:\n        return Outcome("paused"',
        "tests/test_classify.py",
    ),
    m(
        "address-foreign-suffix-ignored",
        "a WeChat id is refused as a Feishu address (the seed's notice reached Feishu)",
        "trio_gateway/channels/base.py",
        "if to.lower().endswith(rule.foreign_suffixes) or not rule.pattern.fullmatch(to):",
        "if not rule.pattern.fullmatch(to):",
        "tests/test_validation.py",
        "tests/test_channels.py",
    ),
    m(
        "address-foreign-suffix-case",
        "a foreign suffix is refused in any case",
        "trio_gateway/channels/base.py",
        "if to.lower().endswith(rule.foreign_suffixes) or not rule.pattern.fullmatch(to):",
        "if to.endswith(rule.foreign_suffixes) or not rule.pattern.fullmatch(to):",
        "tests/test_validation.py",
    ),
    m(
        "address-partial-match",
        "an address must be one of the platform's whole, not merely start like one",
        "trio_gateway/channels/base.py",
        "if to.lower().endswith(rule.foreign_suffixes) or not rule.pattern.fullmatch(to):",
        "if to.lower().endswith(rule.foreign_suffixes) or not re.match(rule.pattern.pattern.rstrip('$'), to):",
        "tests/test_validation.py",
    ),
    # --- the listeners' cursor code ---------------------------------------------------------------
    m(
        "weixin-cursor-first",
        "WeChat's get_updates_buf moves only after the batch's turns are durable",
        WEIXIN,
        '            await intake.accept_batch([h for h in map(heard, reply.get("msgs") or []) if h is not None])\n'
        '            following = reply.get("get_updates_buf")\n'
        "            # Advanced only after every message of the batch is a durable turn.\n"
        "            if isinstance(following, str) and following and following != cursor:\n"
        "                cursor = following\n"
        "                await intake.save_cursor(cursor)\n",
        '            following = reply.get("get_updates_buf")\n'
        "            if isinstance(following, str) and following and following != cursor:\n"
        "                cursor = following\n"
        "                await intake.save_cursor(cursor)\n"
        '            await intake.accept_batch([h for h in map(heard, reply.get("msgs") or []) if h is not None])\n',
        "tests/test_inbound_cursor.py",
    ),
    m(
        "telegram-offset-first",
        "Telegram's offset moves only after the batch's turns are durable",
        TELEGRAM,
        "            await intake.accept_batch([h for h in map(heard, updates) if h is not None])\n"
        "            if updates:\n"
        "                # Confirmed to Telegram by the next poll's offset, after every turn is durable.\n"
        '                offset = max(u["update_id"] for u in updates) + 1\n'
        "                await intake.save_cursor(offset)\n",
        "            if updates:\n"
        '                offset = max(u["update_id"] for u in updates) + 1\n'
        "                await intake.save_cursor(offset)\n"
        "            await intake.accept_batch([h for h in map(heard, updates) if h is not None])\n",
        "tests/test_inbound_cursor.py",
    ),
    m(
        "slack-ack-first",
        "a Slack envelope is acknowledged only after its turn is durable",
        "trio_gateway/channels/slack.py",
        "            if found is not None:\n                await intake.accept(found)\n"
        '        ident = envelope.get("envelope_id") if isinstance(envelope, dict) else None\n',
        '            ident = envelope.get("envelope_id")\n'
        "            if isinstance(ident, str):\n"
        '                await ws.send_message(json.dumps({"envelope_id": ident}))\n'
        "            if found is not None:\n                await intake.accept(found)\n"
        "            return\n"
        '        ident = envelope.get("envelope_id") if isinstance(envelope, dict) else None\n',
        "tests/test_inbound_slack.py",
        "tests/test_inbound_cursor.py",
    ),
    m(
        "feishu-ack-first",
        "a Feishu event is acknowledged only after its turn is durable",
        "trio_gateway/channels/feishu.py",
        "        if found is not None:\n            await intake.accept(found)\n",
        "        if found is not None:\n"
        "            ack0 = attrs.evolve(frame, payload=b'{\"code\": 200}')\n"
        "            await ws.send_message(encode_frame(ack0))\n"
        "            await intake.accept(found)\n",
        "tests/test_inbound_feishu.py",
        "tests/test_inbound_cursor.py",
    ),
    # --- cluster/: fencing --------------------------------------------------------------------------
    m(
        "ack-unfenced",
        "a node that lost its claim cannot ack the new holder's entry away",
        PG_QUEUE,
        "WHERE d.id = a.id AND d.claim_fence = a.fence AND d.claim_node = %s",
        "WHERE d.id = a.id AND d.claim_node = %s",
        "tests/test_cluster_queue.py",
    ),
    m(
        "settle-fence-dropped",
        "a stale retry/hold/release/dead letter/reroute changes nothing (same node, older fence)",
        PG_QUEUE,
        '" WHERE id = %s AND claim_node = %s AND claim_fence = %s",\n'
        "                (*params, claimed.entry.id, self.node_id, claimed.fence),",
        '" WHERE id = %s AND claim_node = %s",\n                (*params, claimed.entry.id, self.node_id),',
        "tests/test_cluster_queue.py",
    ),
    m(
        "settle-unfenced",
        "a settle names the claim it finishes (no fence, no node: anyone's outcome lands)",
        PG_QUEUE,
        '" WHERE id = %s AND claim_node = %s AND claim_fence = %s",\n'
        "                (*params, claimed.entry.id, self.node_id, claimed.fence),",
        '" WHERE id = %s",\n                (*params, claimed.entry.id),',
        "tests/test_cluster_queue.py",
    ),
    m(
        "lone-node-keeps-expired-claims",
        "a lone node takes back its own claims whose lease ran out",
        PG_QUEUE,
        "WHERE d.claim_node IS NOT NULL AND (d.lease_until < %(now)s OR (d.claim_node <> %(me)s",
        "WHERE d.claim_node IS NOT NULL AND ((d.claim_node <> %(me)s",
        "tests/test_cluster_queue.py",
    ),
    m(
        "lease-taken-from-a-live-holder",
        "one node at a time holds a key: a live holder's lease is not taken",
        "trio_gateway/cluster/leases.py",
        '" WHERE l.node_id IS NULL OR l.node_id = %(me)s OR l.expires_at < %(now)s"',
        '" WHERE TRUE OR l.node_id IS NULL OR l.node_id = %(me)s OR l.expires_at < %(now)s"',
        "tests/test_cluster_leases.py",
    ),
    m(
        "lease-epoch-kept-on-takeover",
        "the epoch moves on at every change of holder",
        "trio_gateway/cluster/leases.py",
        '"  epoch = l.epoch + CASE WHEN l.node_id = %(me)s THEN 0 ELSE 1 END"',
        '"  epoch = l.epoch"',
        "tests/test_cluster_leases.py",
    ),
    m(
        "lease-renew-unfenced",
        "a lease lost to another holder is not renewed",
        "trio_gateway/cluster/leases.py",
        '"UPDATE leases SET expires_at = %s WHERE key = %s AND node_id = %s AND epoch = %s"',
        '"UPDATE leases SET expires_at = %s WHERE key = %s AND (node_id = %s OR TRUE) AND (epoch = %s OR TRUE)"',
        "tests/test_cluster_leases.py",
        "tests/test_cluster_inbound.py",
    ),
    m(
        "cluster-cursor-unfenced",
        "a node without the account's lease cannot move its cursor (the cursor never forks)",
        "trio_gateway/cluster/inbound.py",
        '" WHERE EXISTS (SELECT 1 FROM leases WHERE key = %(key)s AND node_id = %(me)s)"',
        '" WHERE %(key)s IS NOT NULL AND %(me)s IS NOT NULL"',
        "tests/test_cluster_inbound.py",
    ),
    # --- tools/http.py: allowHosts ------------------------------------------------------------------
    m(
        "allow-hosts-removed",
        "http_request reaches only allowHosts",
        TOOLS_HTTP,
        "    if target.host not in config.allow_hosts:\n",
        "    if False:\n",
        "tests/test_tools.py",
        "tests/test_allow_hosts.py",
    ),
    m(
        "allow-hosts-substring",
        "allowHosts is matched against the host, not anywhere in the URL",
        TOOLS_HTTP,
        "    if target.host not in config.allow_hosts:\n",
        "    if not any(h in url for h in config.allow_hosts):\n",
        "tests/test_allow_hosts.py",
    ),
    m(
        "allow-hosts-suffix",
        "allowHosts names whole hosts, not domain suffixes",
        TOOLS_HTTP,
        "    if target.host not in config.allow_hosts:\n",
        "    if not any(target.host.endswith(h) for h in config.allow_hosts):\n",
        "tests/test_allow_hosts.py",
    ),
    m(
        "allow-hosts-authority-prefix",
        "userinfo in front of a host cannot pass for the allowed host",
        TOOLS_HTTP,
        "    if target.host not in config.allow_hosts:\n",
        '    if not any(url.split("://", 1)[-1].startswith(h) for h in config.allow_hosts):\n',
        "tests/test_allow_hosts.py",
    ),
    m(
        "client-headers-case",
        "the model cannot set Host or framing headers, in any case",
        TOOLS_HTTP,
        'if name.lower() in CLIENT_HEADERS or name.lower().startswith("proxy-"):',
        'if name in CLIENT_HEADERS or name.lower().startswith("proxy-"):',
        "tests/test_tools.py",
        "tests/test_hostile_input.py",
    ),
    # --- http/auth.py ---------------------------------------------------------------------------------
    m(
        "token-prefix-accepted",
        "the bearer token is compared whole",
        AUTH,
        "if not hmac.compare_digest(given.strip().encode(), token.encode()):",
        "if not token.encode().startswith(given.strip().encode()):",
        "tests/test_process.py",
    ),
    m(
        "token-scheme-ignored",
        "only `Authorization: Bearer <token>` is accepted",
        AUTH,
        'if scheme.lower() != "bearer" or not given:',
        "if not given:",
        "tests/test_process.py",
    ),
    m(
        "exposed-without-token",
        "a non-loopback bind never comes up with a token nobody has seen",
        AUTH,
        "    if not is_loopback(bind):\n",
        "    if False:\n",
        "tests/test_process.py",
    ),
    m(
        "token-file-readable",
        "the token file is created with mode 0600",
        AUTH,
        "fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)",
        "fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)",
        "tests/test_process.py",
    ),
    # --- what /metrics says -------------------------------------------------------------------------
    m(
        "metrics-pending-is-failed",
        "trio_gateway_delivery_queue_pending counts the pending entries",
        "trio_gateway/http/metrics.py",
        'out.sample("delivery_queue_pending", counts.get("pending", 0))',
        'out.sample("delivery_queue_pending", counts.get("failed", 0))',
        "tests/test_metrics.py",
    ),
    # --- access (SPEC 15, issue 20) ----------------------------------------------------------------
    m(
        "access-skipped",
        "every heard message passes the access check before it is a turn",
        "trio_gateway/channels/heard.py",
        "    if on.account is not None and on.access is not None:\n",
        "    if False:\n",
        "tests/test_access.py",
    ),
    m(
        "chatter-is-a-turn",
        "in a `mention` group only a message that addresses the bot is a turn",
        "trio_gateway/policy/access.py",
        'if account.group_policy == "mention" and not facts.addressed:',
        'if account.group_policy == "mention" and facts.addressed is None:',
        "tests/test_access.py",
    ),
    m(
        "code-never-sent",
        "a stranger under `pairing` gets one message carrying the code",
        "trio_gateway/channels/access.py",
        "        if offered is None or self.say is None:\n",
        "        if True:\n",
        "tests/test_access.py",
    ),
    m(
        "webhook-takes-edits",
        "a Telegram edit is not a turn, by webhook as by poll",
        "trio_gateway/channels/telegram.py",
        '    message = update.get("message")\n',
        '    message = update.get("message") or update.get("edited_message")\n',
        "tests/test_interop_telegram.py",
    ),
    m(
        "mention-kept",
        "the mention of the bot is taken out of the prompt",
        "trio_gateway/channels/telegram.py",
        "    for begin, end in sorted(cut, reverse=True):\n",
        "    for begin, end in []:\n",
        "tests/test_e2e_access.py",
    ),
    m(
        "slack-two-turns",
        "a Slack mention's `message` and `app_mention` events make one turn",
        "trio_gateway/channels/slack.py",
        '        f"{channel}:{ts}",\n',
        '        str(payload.get("event_id")),\n',
        "tests/test_access.py",
    ),
    m(
        "thread-lost",
        "a reply goes back into the thread the message was in",
        "trio_gateway/channels/heard.py",
        "context_token=heard.context_token, thread=heard.thread)",
        "context_token=heard.context_token)",
        "tests/test_access.py",
    ),
    m(
        "feishu-group-to-sender",
        "a Feishu group message is answered in the group",
        "trio_gateway/channels/feishu.py",
        "        str(chat_ident) if group else open_id,\n",
        "        open_id,\n",
        "tests/test_access.py",
    ),
    m(
        "media-silent",
        "a direct message without text gets unsupportedMediaReply",
        "trio_gateway/channels/access.py",
        'if heard.chat != "direct" or not notice or self.say is None:',
        'if heard.chat == "direct" or not notice or self.say is None:',
        "tests/test_access.py",
    ),
    m(
        "refusal-not-counted",
        "a refusal is counted in trio_gateway_inbound_refused_total",
        "trio_gateway/channels/access.py",
        "        self.refused[key] = self.refused.get(key, 0) + 1\n",
        "",
        "tests/test_access.py",
    ),
]


@attrs.frozen
class Result:
    mutant: Mutant
    verdict: str  # "killed", "survived", "killed (hang)", "error"
    seconds: float
    detail: str = ""


def copy_tree(dest: Path) -> Path:
    tree = dest / "tree"
    shutil.copytree(REPO, tree, ignore=COPY_IGNORE, symlinks=True)
    return tree


@contextmanager
def applied(tree: Path, mutant: Mutant) -> Iterator[None]:
    """The mutant in the copy's file for the duration; the original back whatever happens."""
    path = tree / mutant.file
    source = path.read_text(encoding="utf-8")
    found = source.count(mutant.original)
    if found != 1:
        raise LookupError(f"{mutant.file}: the original snippet is found {found} times, not once (the code moved?)")
    path.write_text(source.replace(mutant.original, mutant.replacement), encoding="utf-8")
    try:
        yield
    finally:
        path.write_text(source, encoding="utf-8")


def run_tests(tree: Path, tests: Sequence[str], timeout: float) -> tuple[int | None, str]:
    """pytest on `tests` in the copy: (exit code, or None when it ran past `timeout`; the first
    test that failed, or the last line)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, ""
    lines = (done.stdout + done.stderr).strip().splitlines()
    failed = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    return done.returncode, (failed or lines[-1:] or [""])[0]


def verdict_for(code: int | None) -> str:
    if code is None:
        return "killed (hang)"
    if code == 1:
        return "killed"  # tests failed
    if code == 0:
        return "survived"
    return "error"  # 2-5: interrupted, internal or usage error, nothing collected


def try_mutant(tree: Path, mutant: Mutant, timeout: float) -> Result:
    began = time.monotonic()
    try:
        with applied(tree, mutant):
            code, tail = run_tests(tree, mutant.tests, timeout)
    except LookupError as exc:
        return Result(mutant, "error", 0.0, str(exc))
    return Result(mutant, verdict_for(code), time.monotonic() - began, tail)


def select(words: Sequence[str]) -> list[Mutant]:
    if not words:
        return MUTANTS
    return [mu for mu in MUTANTS if any(w in mu.name for w in words)]


def report(results: list[Result]) -> int:
    killed = [r for r in results if r.verdict.startswith("killed")]
    survivors = [r for r in results if r.verdict == "survived"]
    errors = [r for r in results if r.verdict == "error"]
    print(f"\nMutation score: {len(killed)}/{len(results)} killed, {len(survivors)} survived, {len(errors)} error(s)")
    for r in survivors:
        print(f"  SURVIVED {r.mutant.name} ({r.mutant.file}): {r.mutant.promise}")
    for r in errors:
        print(f"  ERROR    {r.mutant.name} ({r.mutant.file}): {r.detail}")
    return 0 if not survivors and not errors else 1


def check(mutants: Sequence[Mutant]) -> int:
    """After a refactor: every original found exactly once, every test file there."""
    stale = 0
    for mu in mutants:
        path = REPO / mu.file
        found = path.read_text(encoding="utf-8").count(mu.original) if path.exists() else 0
        missing = [t for t in mu.tests if not (REPO / t.split("::")[0]).exists()]
        if found != 1 or missing:
            stale += 1
            print(f"STALE {mu.name}: original found {found} time(s) in {mu.file}; missing tests {missing}")
    print(f"{len(mutants) - stale}/{len(mutants)} mutants apply")
    return 1 if stale else 0


def _exit_on_term(signum: int, frame: object) -> None:
    # A terminated run still removes its copy of the tree (the `with` blocks unwind).
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_term)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="run only the mutants whose name contains one of these")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--check", action="store_true", help="check each original is found once, run nothing")
    parser.add_argument("--baseline", action="store_true", help="first run every named test file unmutated")
    parser.add_argument("--timeout", type=float, default=RUN_SECONDS, help="seconds per mutant's test run")
    args = parser.parse_args(argv)
    mutants = select(args.names)
    if args.list:
        for mu in mutants:
            print(f"{mu.name:32} {mu.file:40} {' '.join(mu.tests)}")
        return 0
    if args.check:
        return check(mutants)
    with tempfile.TemporaryDirectory(prefix="mutation-") as scratch:
        tree = copy_tree(Path(scratch))
        if args.baseline:
            tests = sorted({t for mu in mutants for t in mu.tests})
            code, tail = run_tests(tree, tests, args.timeout * 4)
            print(f"baseline ({len(tests)} test targets): exit {code} {tail}")
            if code != 0:
                return 2
        results = []
        for mu in mutants:
            result = try_mutant(tree, mu, args.timeout)
            print(f"{result.verdict:14} {result.seconds:6.1f}s  {mu.name:32} {result.detail[:110]}", flush=True)
            results.append(result)
    return report(results)


if __name__ == "__main__":
    sys.exit(main())
