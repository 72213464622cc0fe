"""Import the modules whose job handlers and periodic ticks register themselves."""

from __future__ import annotations


def register_tasks() -> None:
    import app.audit.linker
    import app.connectors.dispatch
    import app.deadlines.reminders
    import app.exports.service
    import app.notifications.service
    import app.requests.sweeps  # noqa: F401
