"""Shared test setup. The gateway fixtures are the ones users get from the installed plugin."""

from hypothesis import HealthCheck, settings

pytest_plugins = ["trio_gateway.testing.plugin"]

# Hypothesis's per-example deadline (200 ms) and `too_slow` health check are wall-clock figures
# a busy machine can miss: no test here may fail for that. A test's own @settings still
# overrides what it names.
settings.register_profile("busy-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("busy-machine")
