"""Re-runs use the connector farm and helpers of the connector tests."""

from __future__ import annotations

from tests.connectors.conftest import farm, settings_overrides  # noqa: F401
