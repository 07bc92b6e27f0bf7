"""The one place the version is written, on the bottom floor so any room may read it.

pyproject.toml reads it from here ([tool.setuptools.dynamic]), so the package metadata and
`trio-gateway --version` agree, and the CLI gets it without importing importlib.metadata.
`trio_gateway.__version__` is this, re-exported.
"""

__version__ = "0.1.0"
