"""Cross-user and privilege attempts the integration tests saw refused.

Tests append one line per refused attempt; the run's summary lists them (conftest).
"""

DENIED: list[str] = []
