"""The errors a user can see, each named as the contract names it (`ErrorName: message`).

Every error carries the exit code the CLI uses for it (SPEC 4) and the HTTP status the API
answers with (SPEC 5), so the edges never keep their own mapping tables.
"""

from __future__ import annotations


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
    """The model upstream answered with an error or something that is not a completion."""

    exit_code = 1
    http_status = 502


def only_gateway_error(group: BaseExceptionGroup[BaseException]) -> GatewayError | None:
    """The first `GatewayError` of a group (nested groups included) when the group holds
    nothing else: then one `ErrorName: message` says it all. None when anything else is in
    it, which then deserves its traceback."""
    matched, rest = group.split(GatewayError)
    if matched is None or rest is not None:
        return None
    leaf = first_leaf(matched)
    return leaf if isinstance(leaf, GatewayError) else None


def first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of a (nested) group that is not itself a group."""
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


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
