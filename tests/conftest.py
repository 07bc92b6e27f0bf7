"""Shared test setup. The gateway fixtures are the ones users get from the installed plugin."""

pytest_plugins = ["trio_gateway.testing.plugin"]
