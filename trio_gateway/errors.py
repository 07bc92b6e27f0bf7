"""The errors a user can see, each named as the contract names it (`ErrorName: message`).

Every error carries the exit code the CLI uses for it (SPEC 4) and the HTTP status the API
answers with (SPEC 5), so the edges never keep their own mapping tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

E = TypeVar("E", bound=BaseException)


class GatewayError(Exception):
    """Base of every error the gateway reports to a person or a script."""

    exit_code: int = 1
    http_status: int = 500

    @property
    def name(self) -> str:
        return type(self).__name__

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.name


class ConfigError(GatewayError):
    """A bad `gateway.json` (or a bad config value): names the key path and what is wrong."""

    exit_code = 2
    http_status = 400

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{path}: {what}")
        self.path = path
        self.what = what


class UsageError(GatewayError):
    exit_code = 2
    http_status = 400


class BadRequestError(GatewayError):
    """Bad input to the HTTP API: names the field."""

    exit_code = 3
    http_status = 400


class UnauthorizedError(GatewayError):
    """A missing or wrong credential. Says what was missing, never what was expected."""

    exit_code = 1
    http_status = 401


class PayloadTooLargeError(GatewayError):
    exit_code = 3
    http_status = 413


class RequestTimeoutError(GatewayError):
    """A request body that did not arrive within `gateway.bodyReadTimeoutSeconds`."""

    exit_code = 1
    http_status = 408


class GatewayBusyError(GatewayError):
    """Too many requests of one kind in flight (unverified webhook bodies); try again."""

    exit_code = 1
    http_status = 503


class DeliveryValidationError(GatewayError):
    """An address that does not fit its channel; nothing was written."""

    exit_code = 3
    http_status = 400


class GatewayDrainingError(GatewayError):
    """New work refused because the gateway is draining for a restart or stop."""

    exit_code = 1
    http_status = 503


class GatewayUnreachableError(GatewayError):
    exit_code = 1
    http_status = 502


class GatewayLockedError(GatewayError):
    exit_code = 1
    http_status = 409


class NotFoundError(GatewayError):
    exit_code = 1
    http_status = 404


class WorkAbortedError(GatewayError):
    """A unit of work was cancelled by stall recovery, a session abort or a drain."""

    exit_code = 1
    http_status = 500


class ModelCallError(GatewayError):
    """The model upstream answered with an error or something that is not a completion.

    `failover` says why another model may answer instead (SPEC 16: `rate_limited`,
    `overloaded`, `server_error`, `unreachable`, `timeout`); None: another model would fail the
    same way (a 400, a bad key), so the turn ends. `retry_after`: the seconds the upstream asked
    for, when it did."""

    exit_code = 1
    http_status = 502

    def __init__(self, message: str, *, failover: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.failover = failover
        self.retry_after = retry_after


class TokenCapError(GatewayError):
    """An agent has spent its `maxTokensPerDay` (SPEC 16): new turns wait for the next UTC day."""

    exit_code = 1
    http_status = 429


class InsufficientStorageError(GatewayError):
    """New work refused because the disk that would hold it is full (or stopped answering).
    Work already accepted is kept and retried; the gateway stays up and takes work again as
    soon as space returns."""

    exit_code = 1
    http_status = 507


def only_gateway_error(group: BaseExceptionGroup[BaseException]) -> GatewayError | None:
    """The `GatewayError` to report for a group that holds nothing else (nested groups
    included): then one `ErrorName: message` and its exit code say it (`chosen`: the others
    are named in its notes). None when anything else is in it, which deserves its traceback."""
    matched, rest = group.split(GatewayError)
    if matched is None or rest is not None:
        return None
    return chosen(matched)


def leaves(group: BaseExceptionGroup[E]) -> list[E]:
    """Every exception inside a (nested) group that is not itself a group, in order."""
    found: list[E] = []
    for inner in group.exceptions:
        if isinstance(inner, BaseExceptionGroup):
            found += leaves(inner)
        else:
            found.append(inner)
    return found


def chosen(group: BaseExceptionGroup[E]) -> E:
    """The one exception that answers for `group` where only one can (one HTTP status, one
    exit code, one line): its first leaf. Each other leaf is named in that one's `__notes__`
    (the CLI prints them, tracebacks show them), so none is dropped silently. (Not raised
    `from group`: the group holds the chosen one itself, and a cause may not contain its
    effect.)"""
    first, *others = leaves(group)
    note_others(first, others)
    return first


def note_others(error: BaseException, others: Sequence[BaseException]) -> None:
    """Name in `error`'s notes the exceptions raised beside it that it answers for."""
    for other in others:
        error.add_note(f"also raised: {type(other).__name__}: {other}")


def described(error: BaseException) -> str:
    """One line for a log: the error and, from its notes, those it answers for (`chosen`)."""
    return "; ".join([str(error), *getattr(error, "__notes__", ())])


class ClusterDatabaseError(GatewayError):
    """Cluster mode (SPEC 12): the shared database refused, or did not answer in time."""

    exit_code = 1
    http_status = 503


class CronSlotTakenError(GatewayError):
    """Cluster mode: another node fired this cron slot already (one firing per slot)."""

    exit_code = 1
    http_status = 409


class SessionElsewhereError(GatewayError):
    """Cluster mode: another node owns this session now; the turn was not accepted here."""

    exit_code = 1
    http_status = 503
