"""trio-gateway: a gateway between AI agents and messaging channels that never deadlocks on restart."""

# The one place the version is written: pyproject.toml reads it from here
# ([tool.setuptools.dynamic]), so the package metadata and `trio-gateway --version` agree,
# and the CLI gets it without importing importlib.metadata.
__version__ = "0.1.0"
