"""Every table, imported in one place so metadata is complete (migrations, drift check)."""

from __future__ import annotations


def import_all_models() -> None:
    import app.audit.models
    import app.connectors.models
    import app.exports.models
    import app.identity.models
    import app.jobs.models
    import app.notifications.models
    import app.requests.models
    import app.reruns.models  # noqa: F401
