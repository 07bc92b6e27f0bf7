"""trio-gateway: a gateway between AI agents and messaging channels that never deadlocks on restart."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trio-gateway")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0+unknown"
