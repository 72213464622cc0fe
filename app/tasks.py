"""Import the modules whose job handlers and periodic ticks register themselves."""

from __future__ import annotations


def register_tasks() -> None:
    import app.deadlines.reminders
    import app.notifications.service
    import app.requests.fanout
    import app.requests.sweeps  # noqa: F401
