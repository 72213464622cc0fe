"""The legal clock: when an answer to a data-subject request is due, and why.

Pure rules only, with no database and no reading of the system clock (the time is passed in),
so that every deadline can be recomputed and checked from its inputs:

- ``regimes``: each jurisdiction's period, extension, identity-wait rule and authority, as data;
- ``calendar``: working days (weekends and the public holidays of a country);
- ``periods``: Regulation 1182/71 period arithmetic, ``due_at``, days left, reminders.

Anything that stores or sweeps deadlines lives beside this package and calls into it.
"""

from __future__ import annotations

from app.deadlines.calendar import WorkingCalendar, calendar_for
from app.deadlines.periods import (
    Deadline,
    IdentityWait,
    NoExtension,
    acknowledgement_due,
    add_period,
    compute_deadline,
    days_left,
    due_at_for,
    is_overdue,
    reminders_due,
)
from app.deadlines.regimes import (
    REGIMES,
    IdentityWaitMode,
    Period,
    Regime,
    UnknownRegime,
    get_regime,
)

__all__ = [
    "REGIMES",
    "Deadline",
    "IdentityWait",
    "IdentityWaitMode",
    "NoExtension",
    "Period",
    "Regime",
    "UnknownRegime",
    "WorkingCalendar",
    "acknowledgement_due",
    "add_period",
    "calendar_for",
    "compute_deadline",
    "days_left",
    "due_at_for",
    "get_regime",
    "is_overdue",
    "reminders_due",
]
