"""Regimes as data, and the working-day calendar they are counted on."""

from __future__ import annotations

import dataclasses
from datetime import date

import pytest

from app.deadlines import (
    REGIMES,
    Period,
    Regime,
    UnknownRegime,
    WorkingCalendar,
    calendar_for,
    get_regime,
)


@pytest.mark.parametrize(
    ("code", "period", "extended", "identity_wait", "ack_days", "authority", "url"),
    [
        (
            "gdpr",
            Period(months=1),
            Period(months=3),
            "none",
            None,
            "the data protection supervisory authority of your Member State",
            "https://www.edpb.europa.eu/about-edpb/about-edpb/members_en",
        ),
        (
            "gdpr-fr",
            Period(months=1),
            Period(months=3),
            "suspend",
            None,
            "CNIL",
            "https://www.cnil.fr/fr/plaintes",
        ),
        (
            "uk-gdpr",
            Period(months=1),
            Period(months=3),
            "restart",
            None,
            "ICO",
            "https://ico.org.uk/make-a-complaint/",
        ),
        (
            "ccpa",
            Period(days=45),
            Period(days=90),
            "none",
            10,
            "California Privacy Protection Agency",
            "https://cppa.ca.gov/",
        ),
        ("lgpd", Period(days=15), None, "none", None, "ANPD", "https://www.gov.br/anpd/"),
    ],
)
def test_regime_table(
    code: str,
    period: Period,
    extended: Period | None,
    identity_wait: str,
    ack_days: int | None,
    authority: str,
    url: str,
) -> None:
    regime = get_regime(code)

    assert regime.code == code
    assert regime.period == period
    assert regime.extended_period == extended
    assert regime.extendable is (extended is not None)
    assert regime.identity_wait == identity_wait
    assert regime.acknowledgement_business_days == ack_days
    assert regime.authority_name == authority
    assert regime.authority_url == url
    assert regime.rolls_to_working_day is True
    assert regime.name
    assert regime.legal_reference


def test_gdpr_names_its_reference() -> None:
    assert get_regime("gdpr").name == "GDPR (EU)"
    assert get_regime("gdpr").legal_reference == "GDPR Art. 12(3)"


def test_regimes_are_keyed_by_their_code() -> None:
    assert set(REGIMES) == {"gdpr", "gdpr-fr", "uk-gdpr", "ccpa", "lgpd"}
    for code, regime in REGIMES.items():
        assert regime.code == code


def test_regimes_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_regime("gdpr").period = Period(days=1)  # type: ignore[misc]


@pytest.mark.parametrize("code", ["GDPR", " gdpr-fr ", "Uk-Gdpr"])
def test_get_regime_ignores_case_and_spaces(code: str) -> None:
    assert get_regime(code) is REGIMES[code.strip().lower()]


@pytest.mark.parametrize("code", ["", "hipaa", "gdpr_fr"])
def test_unknown_regime_is_a_key_error_naming_the_known_codes(code: str) -> None:
    with pytest.raises(UnknownRegime) as info:
        get_regime(code)

    assert isinstance(info.value, KeyError)
    assert info.value.code == code
    assert "gdpr-fr" in str(info.value)


@pytest.mark.parametrize(
    ("months", "days"),
    [(0, 0), (-1, 0), (0, -3)],
)
def test_period_must_be_positive(months: int, days: int) -> None:
    with pytest.raises(ValueError, match="period"):
        Period(months=months, days=days)


@pytest.mark.parametrize(
    ("period", "text"),
    [
        (Period(months=1), "1 month"),
        (Period(months=3), "3 months"),
        (Period(days=45), "45 days"),
        (Period(months=1, days=1), "1 month and 1 day"),
    ],
)
def test_period_describes_itself(period: Period, text: str) -> None:
    assert period.describe() == text


def test_regime_is_plain_data() -> None:
    custom = Regime(
        code="test",
        name="Test",
        legal_reference="Art. 1",
        period=Period(days=30),
        extended_period=None,
        identity_wait="none",
        acknowledgement_business_days=None,
        authority_name="Authority",
        authority_url="https://example.org/",
        rolls_to_working_day=False,
    )

    assert custom.extendable is False
    assert custom.rolls_to_working_day is False


# --- the calendar ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "working", "holiday"),
    [
        (date(2026, 3, 2), True, False),  # Monday
        (date(2026, 2, 28), False, False),  # Saturday
        (date(2026, 3, 1), False, False),  # Sunday
        (date(2026, 5, 1), False, True),  # Friday, Labour Day
        (date(2026, 7, 14), False, True),  # Tuesday, national day
        (date(2026, 5, 14), False, True),  # Thursday, Ascension
        (date(2026, 5, 25), False, True),  # Whit Monday
        (date(2026, 11, 11), False, True),  # Wednesday, Armistice
        (date(2026, 12, 26), False, False),  # Saturday; not a holiday outside Alsace-Moselle
    ],
)
def test_french_working_days(day: date, working: bool, holiday: bool) -> None:
    calendar = calendar_for("FR")

    assert calendar.is_working_day(day) is working
    assert (calendar.holiday_name(day) is not None) is holiday


def test_regional_holidays_through_a_subdivision() -> None:
    # 26 December 2025 is a Friday: a holiday in Alsace-Moselle (57) only.
    assert calendar_for("FR").is_working_day(date(2025, 12, 26))
    assert not calendar_for("FR-57").is_working_day(date(2025, 12, 26))


def test_holiday_names_are_english() -> None:
    assert calendar_for("FR").holiday_name(date(2026, 12, 25)) == "Christmas Day"


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2026, 3, 2), date(2026, 3, 2)),  # working: unchanged
        (date(2026, 2, 28), date(2026, 3, 2)),  # weekend
        (date(2026, 5, 1), date(2026, 5, 4)),  # holiday then weekend
        (date(2026, 5, 23), date(2026, 5, 26)),  # weekend then Whit Monday
        (date(2026, 12, 25), date(2026, 12, 28)),  # Christmas (Friday) then weekend
    ],
)
def test_roll_forward(day: date, expected: date) -> None:
    assert calendar_for("FR").roll_forward(day) == expected


@pytest.mark.parametrize(
    ("day", "n", "expected"),
    [
        (date(2026, 3, 2), 0, date(2026, 3, 2)),
        (date(2026, 3, 2), 1, date(2026, 3, 3)),
        (date(2026, 3, 6), 1, date(2026, 3, 9)),  # Friday + 1 = Monday
        (date(2026, 2, 28), 1, date(2026, 3, 2)),  # from a Saturday
        (date(2026, 4, 28), 5, date(2026, 5, 6)),  # skips 1 May and the weekend
        (date(2026, 1, 5), 10, date(2026, 1, 19)),
    ],
)
def test_add_working_days(day: date, n: int, expected: date) -> None:
    assert calendar_for("FR").add_working_days(day, n) == expected


def test_add_working_days_refuses_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        calendar_for("FR").add_working_days(date(2026, 3, 2), -1)


@pytest.mark.parametrize("country", ["XX", "", "FR-99"])
def test_unknown_country_is_a_value_error(country: str) -> None:
    with pytest.raises(ValueError, match="no public-holiday calendar"):
        WorkingCalendar(country)


def test_calendar_for_is_shared() -> None:
    assert calendar_for("FR") is calendar_for("FR")
    assert calendar_for("FR").country == "FR"
