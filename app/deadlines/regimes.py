"""Legal regimes as data.

Each jurisdiction's answer deadline is described by one frozen ``Regime`` value, so adding or
correcting a regime is a data change reviewed by a lawyer, never a new code path (DESIGN.md,
"Deadlines are law"). The arithmetic that reads these values lives in ``periods.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IdentityWaitMode = Literal["none", "suspend", "restart"]
"""What waiting for identity information from the subject does to the clock.

- ``none``: nothing; the period runs from receipt regardless.
- ``suspend``: the clock stops while the information is awaited; the days spent waiting are
  added to the end of the period.
- ``restart``: the period runs from the day the information arrives.
"""


class UnknownRegime(KeyError):
    """A jurisdiction code that names no regime (a ``KeyError``, as for any unknown key)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code

    def __str__(self) -> str:
        # KeyError.__str__ would quote the repr; say what is wrong instead.
        known = ", ".join(sorted(REGIMES))
        return f"unknown jurisdiction {self.code!r} (known: {known})"


@dataclass(frozen=True)
class Period:
    """A legal period: whole months (Regulation 1182/71 month counting) plus calendar days.

    Months are added first, then days; every regime today uses one or the other.
    """

    months: int = 0
    days: int = 0

    def __post_init__(self) -> None:
        if self.months < 0 or self.days < 0:
            raise ValueError("a period cannot be negative")
        if self.months == 0 and self.days == 0:
            raise ValueError("a period must last at least one day")

    def describe(self) -> str:
        """The period in words for explanations, e.g. ``1 month`` or ``45 days``."""
        parts = []
        if self.months:
            parts.append(f"{self.months} month" + ("s" if self.months != 1 else ""))
        if self.days:
            parts.append(f"{self.days} day" + ("s" if self.days != 1 else ""))
        return " and ".join(parts)


@dataclass(frozen=True)
class Regime:
    """One jurisdiction's rules for the answer deadline.

    ``extended_period`` is the total period once extended, counted from the same start day
    (GDPR: 3 months in total, i.e. two further months), or ``None`` where no extension exists.
    """

    code: str
    name: str
    legal_reference: str
    period: Period
    extended_period: Period | None
    identity_wait: IdentityWaitMode
    acknowledgement_business_days: int | None
    authority_name: str
    authority_url: str
    rolls_to_working_day: bool = True

    @property
    def extendable(self) -> bool:
        return self.extended_period is not None


_GDPR_PERIOD = Period(months=1)
_GDPR_EXTENDED = Period(months=3)

REGIMES: dict[str, Regime] = {
    regime.code: regime
    for regime in (
        Regime(
            code="gdpr",
            name="GDPR (EU)",
            legal_reference="GDPR Art. 12(3)",
            period=_GDPR_PERIOD,
            extended_period=_GDPR_EXTENDED,
            identity_wait="none",
            acknowledgement_business_days=None,
            authority_name="the data protection supervisory authority of your Member State",
            # The EDPB's list of member authorities: the subject picks their own.
            authority_url="https://www.edpb.europa.eu/about-edpb/about-edpb/members_en",
        ),
        Regime(
            code="gdpr-fr",
            name="GDPR (France)",
            legal_reference="GDPR Art. 12(3)",
            period=_GDPR_PERIOD,
            extended_period=_GDPR_EXTENDED,
            # CNIL practice: the clock stops while identity information asked of the subject
            # is awaited, and resumes when it arrives.
            identity_wait="suspend",
            acknowledgement_business_days=None,
            authority_name="CNIL",
            authority_url="https://www.cnil.fr/fr/plaintes",
        ),
        Regime(
            code="uk-gdpr",
            name="UK GDPR",
            legal_reference="UK GDPR Art. 12(3)",
            period=_GDPR_PERIOD,
            extended_period=_GDPR_EXTENDED,
            # ICO guidance: the time limit starts when the requested identity information
            # is received.
            identity_wait="restart",
            acknowledgement_business_days=None,
            authority_name="ICO",
            authority_url="https://ico.org.uk/make-a-complaint/",
        ),
        Regime(
            code="ccpa",
            name="CCPA/CPRA (California)",
            legal_reference="Cal. Civ. Code § 1798.130(a)(2); Cal. Code Regs. tit. 11, § 7021",
            period=Period(days=45),
            extended_period=Period(days=90),
            identity_wait="none",
            acknowledgement_business_days=10,
            authority_name="California Privacy Protection Agency",
            authority_url="https://cppa.ca.gov/",
        ),
        Regime(
            code="lgpd",
            name="LGPD (Brazil)",
            legal_reference="LGPD Art. 19, II",
            period=Period(days=15),
            extended_period=None,
            identity_wait="none",
            acknowledgement_business_days=None,
            authority_name="ANPD",
            authority_url="https://www.gov.br/anpd/",
        ),
    )
}
"""Every regime by its jurisdiction code (the ``jurisdiction`` field of a request)."""


def get_regime(code: str) -> Regime:
    """The regime for a jurisdiction code; ``UnknownRegime`` names the known codes."""
    try:
        return REGIMES[code.strip().lower()]
    except KeyError:
        raise UnknownRegime(code) from None
