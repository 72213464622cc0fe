"""Working days: Saturdays, Sundays and the public holidays of one country are not working days.

Regulation (EEC, Euratom) 1182/71 art. 3(4) moves a period that ends on a Saturday, Sunday or
public holiday to the next working day; CCPA acknowledgements are due in business days. Both
need the same calendar, built from the ``holidays`` package and cached per country because
building it is not free and it never changes while the process runs.
"""

from __future__ import annotations

import threading
from datetime import date, timedelta
from functools import lru_cache

import holidays

_SATURDAY = 5
_ENGLISH = ("en_US", "en_GB", "en")
# No real calendar has a year of consecutive non-working days; a longer run means bad data.
_MAX_NON_WORKING_RUN = 366


class WorkingCalendar:
    """Weekends (Saturday, Sunday) and public holidays of ``country``.

    ``country`` is an ISO 3166-1 alpha-2 code (``FR``), optionally with a subdivision after a
    hyphen (``US-CA``, ``FR-57``) for regional holidays.
    """

    def __init__(self, country: str) -> None:
        code, _, subdiv = country.strip().partition("-")
        self.country = country.strip()
        try:
            calendar = holidays.country_holidays(code.upper(), subdiv=subdiv or None)
            # Holiday names end up in staff explanations, which are written in English.
            english = next(
                (lang for lang in _ENGLISH if lang in calendar.supported_languages), None
            )
            if english is not None and not (calendar.default_language or "").startswith("en"):
                calendar = holidays.country_holidays(
                    code.upper(), subdiv=subdiv or None, language=english
                )
        except NotImplementedError as exc:
            raise ValueError(f"no public-holiday calendar for {country!r}: {exc}") from exc
        self._holidays = calendar
        # ``holidays`` fills years lazily on lookup, mutating the mapping; the calendar is
        # shared process-wide (``calendar_for``), so lookups are serialised.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"WorkingCalendar({self.country!r})"

    def holiday_name(self, day: date) -> str | None:
        """The public holiday's name (English where the package has it), else ``None``."""
        with self._lock:
            return self._holidays.get(day)

    def is_working_day(self, day: date) -> bool:
        return day.weekday() < _SATURDAY and self.holiday_name(day) is None

    def roll_forward(self, day: date) -> date:
        """``day`` itself if it is a working day, else the next working day."""
        for _ in range(_MAX_NON_WORKING_RUN):
            if self.is_working_day(day):
                return day
            day += timedelta(days=1)
        raise RuntimeError(f"no working day within a year after {day} in {self.country}")

    def add_working_days(self, day: date, n: int) -> date:
        """The ``n``-th working day after ``day``; ``day`` itself is not counted (n=0: ``day``)."""
        if n < 0:
            raise ValueError("n must not be negative")
        for _ in range(n):
            day = self.roll_forward(day + timedelta(days=1))
        return day


@lru_cache(maxsize=64)
def calendar_for(country: str) -> WorkingCalendar:
    """The shared calendar for ``country`` (see ``WorkingCalendar``), built once."""
    return WorkingCalendar(country)
