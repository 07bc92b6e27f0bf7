"""Channels that listen (SPEC 11): one listener per account, supervised in the generation's
services nursery, each in its own cancel scope.

    services nursery
    └── ListenerSupervisor.run
        └── one task per listening account  (cancel scope: `stop()` cancels it at drain start)
            listen → connection error → full-jitter backoff (1–60 s) → listen …
                   → auth failure     → paused (listener and sender) until `resume()`
            after the scope: the platform's stop call, bounded by channelStopTimeoutSeconds

A message a listener hears goes through `AccountIntake.accept`: a turn written to `sessions/`
before it returns (the session file also records the platform's message id, in the same atomic
write, so a re-read message is a no-op). Only then does the listener advance and persist its
cursor (`inbound/<channel>/<accountId>.json`, atomic) or ack the envelope. A message that can
never become a turn is set aside (`rejected.py`), and the listener moves on.
Everything about one platform lives in that platform's module (`weixin.py`, `telegram.py`); the
shared vocabulary (`Heard`, `Intake`, `Listener`) in `inbound.py`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import attrs
import trio

from trio_gateway.channels.access import Access
from trio_gateway.channels.base import AddressRule
from trio_gateway.channels.cursors import Cursors
from trio_gateway.channels.heard import HeardOn, NotATurn, Submit, submit_heard
from trio_gateway.channels.inbound import AuthFailed, Heard, Intake, Listener, ListenError
from trio_gateway.channels.rejected import RejectedStore, poison
from trio_gateway.errors import DeliveryValidationError, GatewayDrainingError, described
from trio_gateway.log import EventLog, ms
from trio_gateway.policy import backoff
from trio_gateway.policy.config import AccountConfig, AgentConfig

# `connecting`: a socket's first connection until its handshake is answered (Discord's READY).
ListenState = Literal["connecting", "listening", "reconnecting", "paused", "off"]
BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
# Account ids name files under inbound/: never a path.
ACCOUNT_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")


# --- one account ---------------------------------------------------------------------------------


@attrs.define(eq=False)
class AccountListener:
    channel: str
    account_id: str
    mode: str
    agent_id: str | None
    listener: Listener | None
    # The platform's address rule (its `ChannelKind.address`): a message whose sender is no
    # address there could never be answered, so it is skipped with a warning.
    address: AddressRule | None
    state: ListenState = "off"
    messages: int = 0
    last_message_at: float | None = None
    stop_requested_at: float | None = None
    pause_reason: str | None = None
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    resumed: trio.Event = attrs.Factory(trio.Event)
    attempt: int = 0
    # Cluster mode: another node holds this account's lease, so this one is not listening and
    # must not make the platform's stop call at a drain (it would stop the holder's connection).
    standby: bool = False
    # Its keys (the access rules of SPEC 15); None only where a test builds one by hand.
    account: AccountConfig | None = None

    def status(self, now: float) -> dict[str, Any]:
        age = None if self.last_message_at is None else round(now - self.last_message_at, 3)
        inbound: dict[str, Any] = {
            "mode": self.mode,
            "state": self.state,
            "lastMessageAgeSeconds": age,
            "messages": self.messages,
        }
        if self.pause_reason is not None:
            inbound["pausedReason"] = self.pause_reason
        return {"channel": self.channel, "accountId": self.account_id, "inbound": inbound}


@attrs.define(eq=False)
class AccountIntake:
    """`Intake` for one account: turns into `submit`, cursors into `cursors`."""

    account: AccountListener
    submit: Submit
    cursors: Cursors
    log: EventLog
    on_message: Callable[[str, str], None]
    stats: InboundStats
    rejected: RejectedStore | None = None
    access: Access | None = None

    async def accept(self, heard: Heard) -> None:
        a = self.account
        assert a.agent_id is not None
        problem = poison(heard)
        if problem is not None:
            await self._set_aside(heard, problem)
            return
        try:
            on = HeardOn(a.channel, a.account_id, a.agent_id, a.address, a.account, self.access)
            new = await submit_heard(self.submit, on, heard)
        except DeliveryValidationError as exc:
            self.log.warn("CHANNEL", f"Skipped message channel={a.channel} account={a.account_id}: {exc}")
            return
        except GatewayDrainingError:
            # A drain cancels this listener's scope at its request, so this is only reached
            # when intake is closed otherwise (a generation starting): retry after a backoff.
            # Either way the cursor stays where it was and the message is heard again.
            await trio.lowlevel.checkpoint()
            raise ListenError("the gateway is not accepting work at the moment") from None
        except ValueError as exc:
            # What the message holds, not the gateway's state (a disk fault is an OSError and
            # is retried): the same message would fail the same way at every re-read.
            await self._set_aside(heard, f"{type(exc).__name__}: {exc}")
            return
        if isinstance(new, NotATurn):
            return
        if new is not None:
            a.messages += 1
            a.last_message_at = trio.current_time()
            self.on_message(a.channel, a.account_id)
        else:
            self.log.debug("CHANNEL", f"Duplicate message skipped channel={a.channel} account={a.account_id}")

    async def _set_aside(self, heard: Heard, reason: str) -> None:
        """Kept for a person (`rejected.py`), logged, counted; the listener moves on."""
        a = self.account
        if self.rejected is not None:
            await self.rejected.set_aside(a.channel, a.account_id, heard, reason)
        self.stats.reject(a.channel, a.account_id)

    async def accept_batch(self, batch: list[Heard]) -> None:
        # Conversations are independent: their turns are written concurrently (the session
        # writes' fsyncs overlap), each conversation's in the order heard, so replies keep it.
        by_conversation: dict[str, list[Heard]] = {}
        for heard in batch:
            by_conversation.setdefault(heard.to, []).append(heard)
        if len(by_conversation) <= 1:
            for heard in batch:
                await self.accept(heard)
            return
        async with trio.open_nursery() as nursery:
            for messages in by_conversation.values():
                nursery.start_soon(self._accept_in_order, messages)

    async def _accept_in_order(self, messages: list[Heard]) -> None:
        for heard in messages:
            await self.accept(heard)

    async def load_cursor(self) -> Any:
        return await self.cursors.load(self.account.channel, self.account.account_id)

    async def save_cursor(self, cursor: Any) -> None:
        await self.cursors.save(self.account.channel, self.account.account_id, cursor)

    def connected(self) -> None:
        self.account.state = "listening"
        self.account.attempt = 0


def agent_for(agents: Mapping[str, AgentConfig], channel: str, account_id: str) -> str | None:
    """SPEC 11: the first agent whose `channels` name this channel and whose `accountId` is this
    account (an agent with no `accountId` takes any account of its channels)."""
    for name, agent in agents.items():
        if channel in agent.channels and agent.account_id in (None, account_id):
            return name
    return None


class SenderControl(Protocol):
    """The delivery side's half of a pause: an auth failure pauses sends of that account too."""

    def pause_account(self, channel: str, account_id: str, reason: str) -> None: ...

    def resume_account(self, channel: str, account_id: str) -> None: ...


@attrs.define
class NoSender:
    def pause_account(self, channel: str, account_id: str, reason: str) -> None:
        pass

    def resume_account(self, channel: str, account_id: str) -> None:
        pass


class AccountGate(Protocol):
    """Cluster mode (SPEC 12): one node at a time listens to an account, under a lease on
    `inbound:<channel>:<account>`. Without a gate (files) every account is listened to here."""

    # How often a held lease is renewed, and how soon a node retries a key another node holds.
    renew_seconds: float

    def key(self, channel: str, account_id: str) -> str:
        """`inbound:<channel>:<account>`."""

    async def take(self, key: str) -> Any | None:
        """The lease if this node now holds `key`; None: another node does."""

    async def keep(self, held: Any) -> Any | None:
        """The renewed lease; None: it was lost (stop listening at once)."""

    async def give_up(self, held: Any) -> None:
        """At a drain: peers may take the key at once."""

    async def standby(self) -> None:
        """Wait before trying for a key another node holds: `renew_seconds`, or less when a
        peer lets a lease go (its drain gave the key up)."""


# --- the supervisor ------------------------------------------------------------------------------


@attrs.define
class InboundStats:
    """Counters that outlive a generation (the metrics are counters: they never go back)."""

    # Messages that became turns, by (channel, account).
    messages: dict[tuple[str, str], int] = attrs.Factory(dict)
    # Seconds each listener took from the drain's start to its scope closed and its stop call
    # done: `/metrics` (trio_gateway_channel_stop_seconds) and the benchmark read them.
    stop_seconds: list[float] = attrs.Factory(list)
    # Messages set aside as poison (`inbound/<channel>/<account>/rejected/`), by (channel, account).
    rejected: dict[tuple[str, str], int] = attrs.Factory(dict)

    def count(self, channel: str, account_id: str) -> None:
        key = (channel, account_id)
        self.messages[key] = self.messages.get(key, 0) + 1

    def reject(self, channel: str, account_id: str) -> None:
        key = (channel, account_id)
        self.rejected[key] = self.rejected.get(key, 0) + 1


@attrs.define(eq=False)
class ListenerSupervisor:
    accounts: list[AccountListener]
    submit: Submit
    cursors: Cursors
    log: EventLog
    stop_timeout_seconds: float
    sender: SenderControl = attrs.Factory(NoSender)
    rng: random.Random = attrs.Factory(random.Random)
    stats: InboundStats = attrs.Factory(InboundStats)
    gate: AccountGate | None = None
    rejected: RejectedStore | None = None
    # The access check (SPEC 15), shared with the webhook route; None: every message is a turn.
    access: Access | None = None
    _stopped: bool = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for account in self.accounts:
                if account.listener is not None and not self._stopped:
                    nursery.start_soon(self._supervise, account)
            task_status.started()

    def stop(self) -> None:
        """At the start of a drain, with intake: every listener's scope is cancelled now, which
        closes its long poll or socket at once. Synchronous, so it cannot hold the drain."""
        self._stopped = True
        now = trio.current_time()
        for account in self.accounts:
            if account.listener is not None:
                account.stop_requested_at = now
                account.scope.cancel(reason="drain started: listeners stop with intake")

    def find(self, channel: str, account_id: str) -> AccountListener | None:
        return next((a for a in self.accounts if (a.channel, a.account_id) == (channel, account_id)), None)

    def resume(self, channel: str, account_id: str) -> bool:
        """`channels resume C A`: True when the account was paused and now retries."""
        account = self.find(channel, account_id)
        self.sender.resume_account(channel, account_id)
        if account is None or account.state != "paused":
            return False
        self.log.info("CHANNEL", f"Resumed channel={channel} account={account_id}")
        account.resumed.set()
        return True

    def status(self) -> list[dict[str, Any]]:
        now = trio.current_time()
        return [a.status(now) for a in self.accounts]

    async def _supervise(self, account: AccountListener) -> None:
        listener = account.listener
        assert listener is not None
        intake = AccountIntake(
            account, self.submit, self.cursors, self.log, self.stats.count, self.stats, self.rejected, self.access
        )
        with account.scope:
            if self.gate is None:
                await self._listen_forever(account, listener, intake)
            else:
                await self._listen_while_held(self.gate, account, listener, intake)
        await self._stop_platform(account, listener)

    async def _listen_while_held(
        self, gate: AccountGate, account: AccountListener, listener: Listener, intake: Intake
    ) -> None:
        """Listen only while this node holds the account's lease; a lost lease stops the
        listener at once (another node listens now) and this node waits to take it back."""
        key = gate.key(account.channel, account.account_id)
        while True:
            held = await gate.take(key)
            account.standby = held is None
            if held is None:
                account.state = "off"
                await gate.standby()
                continue
            self.log.info("CHANNEL", f"Listening channel={account.channel} account={account.account_id} (lease {key})")
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._keep_lease, gate, held, account, nursery.cancel_scope)
                    await self._listen_forever(account, listener, intake)
            except BaseException:
                # A drain: give the key up so a peer listens at once, not after the lease runs out.
                with trio.move_on_after(self.stop_timeout_seconds, shield=True):
                    await gate.give_up(held)
                raise
            account.state = "off"
            account.standby = True
            with trio.move_on_after(self.stop_timeout_seconds, shield=True):
                await self._stop_call(account, listener)

    async def _keep_lease(
        self, gate: AccountGate, held: Any, account: AccountListener, listening: trio.CancelScope
    ) -> None:
        while held is not None:
            await trio.sleep(gate.renew_seconds)
            held = await gate.keep(held)
        self.log.warn("CHANNEL", f"Lost the inbound lease channel={account.channel} account={account.account_id}")
        listening.cancel(reason="inbound lease lost: another node listens to this account")

    async def _listen_forever(self, account: AccountListener, listener: Listener, intake: Intake) -> None:
        while True:
            # A long poll in flight is listening; a socket, once the platform answers (`connected`).
            account.state = (
                "reconnecting" if account.attempt else "connecting" if account.mode == "socket" else "listening"
            )
            outcome = await self._listen_once(listener, intake)
            if isinstance(outcome, AuthFailed):
                await self._pause(account, str(outcome))
                continue
            account.attempt += 1
            account.state = "reconnecting"
            wait = backoff.delay(account.attempt, BACKOFF_INITIAL_SECONDS, BACKOFF_MAX_SECONDS, self.rng)
            self.log.warn(
                "CHANNEL",
                f"Reconnecting channel={account.channel} account={account.account_id} in {wait:.1f}s",
                reason=described(outcome)[:200],
            )
            await trio.sleep(wait)

    async def _listen_once(self, listener: Listener, intake: Intake) -> Exception:
        try:
            await listener.listen(intake)
        except (ListenError, AuthFailed) as exc:
            return exc
        except Exception as exc:  # a broken listener must not take the generation down
            self.log.error("CHANNEL", f"Listener raised {exc!r}", channel=listener.channel)
            return ListenError(f"{type(exc).__name__}: {exc}")
        return ListenError("the platform closed the connection")

    async def _pause(self, account: AccountListener, reason: str) -> None:
        account.state = "paused"
        account.pause_reason = reason
        self.log.error(
            "CHANNEL",
            f"Paused channel={account.channel} account={account.account_id}: {reason}; "
            f"listener and sender wait for `channels resume {account.channel} {account.account_id}` or a restart",
        )
        self.sender.pause_account(account.channel, account.account_id, reason)
        await account.resumed.wait()
        account.resumed = trio.Event()
        account.pause_reason = None
        account.attempt = 0

    async def _stop_call(self, account: AccountListener, listener: Listener) -> None:
        try:
            await listener.stop()
        except Exception as exc:
            self.log.warn("CHANNEL", f"Stop call failed channel={account.channel}: {exc!r}")

    async def _stop_platform(self, account: AccountListener, listener: Listener) -> None:
        """Runs after the scope is cancelled (and while the services nursery may be): shielded,
        and bounded by channelStopTimeoutSeconds, so a hung platform cannot hold a restart."""
        with trio.move_on_after(self.stop_timeout_seconds, shield=True):
            try:
                if not account.standby:
                    await self._stop_call(account, listener)
            finally:
                with trio.move_on_after(self.stop_timeout_seconds, shield=True):
                    await listener.aclose()
        started = account.stop_requested_at if account.stop_requested_at is not None else trio.current_time()
        took = trio.current_time() - started
        self.stats.stop_seconds.append(took)
        account.state = "off"
        self.log.info("CHANNEL", f"Stopped channel={account.channel} account={account.account_id} in {ms(took)}")


def account_file_ok(account_id: str) -> bool:
    return ACCOUNT_FILE.fullmatch(account_id) is not None
