"""Every mail renders in both languages with the facts the law and the subject need."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from jinja2 import UndefinedError

from app.notifications import templates
from app.notifications.templates import TEMPLATE_NAMES, RenderedMail, pick_language, render

STATUS_URL = "https://dsr.example/requests/req_01abc"


def full_context(**overrides: object) -> dict[str, object]:
    context: dict[str, object] = {
        "request_id": "req_01abc",
        "request_type": "access",
        "status_url": STATUS_URL,
        "received_date": date(2026, 3, 2),
        "due_date": date(2026, 4, 2),
        "organisation": "Exemple SAS",
        "code": "482915",
        "valid_minutes": 15,
        "reason": "Votre demande porte sur douze systèmes distincts.",
        "new_due_date": date(2026, 6, 2),
        "reason_code": "identity_not_verified",
        "detail": "",
        "authority_name": "CNIL",
        "authority_url": "https://www.cnil.fr/fr/plaintes",
        "window_days": 14,
        "outcomes": [{"system": "CRM", "outcome": "found", "retained": []}],
        "days_left": 7,
        "connector_name": "Caisse",
        "expires_date": date(2026, 5, 2),
    }
    context.update(overrides)
    return context


def mail(name: str, language: str, **overrides: object) -> RenderedMail:
    return render(name, language=language, default_language="fr", context=full_context(**overrides))


@pytest.mark.parametrize("language", ["fr", "en"])
@pytest.mark.parametrize("name", sorted(TEMPLATE_NAMES))
def test_every_template_renders(name: str, language: str) -> None:
    rendered = mail(name, language)
    assert rendered.language == language
    assert "req_01abc" in rendered.subject
    assert "\n" not in rendered.subject
    assert "req_01abc" in rendered.text
    assert rendered.text.endswith("\n")
    assert not rendered.text.startswith("\n")
    assert "\n\n\n" not in rendered.text
    assert "Subject:" not in rendered.text
    assert "{{" not in rendered.text
    assert "{%" not in rendered.text


def test_every_template_exists_in_every_language() -> None:
    root = Path(templates.__file__).parent / "templates"
    for language in templates.SUPPORTED_LANGUAGES:
        assert {path.stem for path in (root / language).glob("*.txt")} == TEMPLATE_NAMES


@pytest.mark.parametrize("name", sorted(TEMPLATE_NAMES - {"staff_reminder", "staff_task"}))
def test_subject_mails_link_status_page_and_sign(name: str) -> None:
    for language in ("fr", "en"):
        text = mail(name, language).text
        assert "Exemple SAS" in text
        if name != "expiry":
            assert STATUS_URL in text


def test_empty_organisation_gets_a_generic_signature() -> None:
    assert (
        "L'équipe chargée de la protection des données"
        in mail("acknowledgement", "fr", organisation="").text
    )
    assert "The data protection team" in mail("acknowledgement", "en", organisation="").text


def test_verification_code() -> None:
    fr = mail("verification_code", "fr")
    assert "482915" in fr.text
    assert "15 minutes" in fr.text
    assert "droit d'accès" in fr.text
    assert "482915" not in fr.subject  # subjects show up in previews and server logs
    en = mail("verification_code", "en")
    assert "482915" in en.text
    assert "15 minutes" in en.text
    assert "right of access" in en.text


def test_acknowledgement_states_dates_and_extension_possibility() -> None:
    fr = mail("acknowledgement", "fr").text
    assert "2 mars 2026" in fr
    assert "au plus tard le 2 avril 2026" in fr
    assert "prolongé de deux mois" in fr
    en = mail("acknowledgement", "en").text
    assert "2 March 2026" in en
    assert "by 2 April 2026" in en
    assert "extended by two months" in en


def test_extension_gives_reason_and_new_date() -> None:
    fr = mail("extension", "fr").text
    assert "douze systèmes distincts" in fr
    assert "2 juin 2026" in fr
    assert "article 12, paragraphe 3" in fr
    en = mail("extension", "en", reason="Twelve separate systems hold your data.").text
    assert "Twelve separate systems" in en
    assert "2 June 2026" in en
    assert "Article 12(3)" in en


@pytest.mark.parametrize(
    ("reason_code", "fr_words", "en_words"),
    [
        (
            "identity_not_verified",
            "pas pu vérifier votre identité",
            "could not verify your identity",
        ),
        ("manifestly_unfounded", "manifestement infondée", "manifestly unfounded"),
        ("excessive", "excessive", "excessive"),
        ("other", "ne remplit pas les conditions", "does not meet the conditions"),
    ],
)
def test_rejection_explains_reason_and_remedies(
    reason_code: str, fr_words: str, en_words: str
) -> None:
    fr = mail("rejection", "fr", reason_code=reason_code).text
    assert fr_words in fr
    assert "réclamation" in fr
    assert "CNIL" in fr
    assert "https://www.cnil.fr/fr/plaintes" in fr
    assert "recours juridictionnel" in fr
    assert "reçue le 2 mars 2026" in fr
    assert "Précisions" not in fr  # no empty detail line

    en = mail(
        "rejection",
        "en",
        reason_code=reason_code,
        authority_name="Information Commissioner's Office",
        authority_url="https://ico.org.uk/make-a-complaint/",
    ).text
    assert en_words in en
    assert "lodge a complaint with the supervisory authority" in en
    assert "Information Commissioner's Office" in en
    assert "https://ico.org.uk/make-a-complaint/" in en
    assert "judicial remedy" in en


def test_rejection_detail_and_default_authority() -> None:
    fr = mail(
        "rejection", "fr", reason_code="other", detail="Dossier déjà traité.", authority_name=""
    ).text
    assert "Précisions : Dossier déjà traité." in fr
    assert "CNIL" in fr
    en = mail("rejection", "en", detail="Already answered.", authority_name="", authority_url="")
    assert "Details: Already answered." in en.text
    assert "CNIL" in en.text
    assert "https://www.cnil.fr/fr/plaintes" in en.text


def test_expiry_mentions_window_and_new_request() -> None:
    fr = mail("expiry", "fr").text
    assert "14 jours" in fr
    assert "nouvelle demande" in fr
    assert "1 jour," in mail("expiry", "fr", window_days=1).text
    en = mail("expiry", "en").text
    assert "14 days" in en
    assert "new request" in en
    assert "1 day," in mail("expiry", "en", window_days=1).text


def test_cancellation() -> None:
    assert "annulée" in mail("cancellation", "fr").text
    assert "cancelled" in mail("cancellation", "en").text


def test_completion_lists_outcomes_without_data() -> None:
    outcomes = [
        {"system": "CRM", "outcome": "found", "retained": []},
        {"system": "Facturation", "outcome": "not_found", "retained": []},
    ]
    fr = mail("completion", "fr", outcomes=outcomes).text
    assert "- CRM : nous détenons des données vous concernant" in fr
    assert "- Facturation : aucune donnée vous concernant" in fr
    assert "télécharger" in fr
    en = mail("completion", "en", outcomes=outcomes, request_type="erasure").text
    assert "- CRM: we hold data about you" in en
    assert "download" not in en
    assert "right to erasure" in en


def test_completion_names_what_was_retained_and_why() -> None:
    retained = {
        "category": "invoices",
        "reason": "tax law",
        "legal_basis": "French Commercial Code L.123-22",
        "until": date(2035, 5, 1),
    }
    outcomes = [{"system": "Billing", "outcome": "retained", "retained": [retained]}]
    fr = mail("completion", "fr", outcomes=outcomes, request_type="erasure").text
    assert "invoices conservé : tax law (French Commercial Code L.123-22)" in fr
    assert "1er mai 2035" in fr
    en = mail("completion", "en", outcomes=outcomes, request_type="erasure").text
    assert "except what the law obliges us to keep" in en
    assert "invoices kept: tax law (French Commercial Code L.123-22), until 1 May 2035" in en


@pytest.mark.parametrize("language", ["fr", "en"])
def test_each_retained_category_and_the_recipients_have_a_line_of_their_own(
    language: str,
) -> None:
    kept = [
        {
            "category": "invoices",
            "reason": "tax",
            "legal_basis": "L.123-22",
            "until": date(2035, 5, 1),
        },
        {
            "category": "contracts",
            "reason": "claims",
            "legal_basis": "Code civil 2224",
            "until": None,
        },
    ]
    outcomes = [
        {
            "system": "Billing",
            "outcome": "retained",
            "retained": kept,
            "recipients_notified": ["accounting firm"],
        },
        {"system": "CRM", "outcome": "erased", "retained": []},
    ]
    lines = mail(
        "completion", language, outcomes=outcomes, request_type="erasure"
    ).text.splitlines()
    starts = [line.strip().split(" ")[0] for line in lines]
    at = starts.index("invoices")
    assert starts[at + 1] == "contracts"
    assert lines[at + 2].strip().endswith(": accounting firm")
    assert lines[at + 3].startswith("  - CRM")
    assert "L.123-22" in lines[at]
    assert "2035" in lines[at]
    assert "2224" in lines[at + 1]
    assert "accounting" not in lines[at + 1]


def test_completion_without_outcomes_says_nothing_was_held() -> None:
    fr = mail("completion", "fr", outcomes=[]).text
    assert "Aucun de nos systèmes" in fr
    assert "rien à faire" in fr
    en = mail("completion", "en", outcomes=[]).text
    assert "None of our systems" in en
    assert "nothing to do" in en


@pytest.mark.parametrize(
    ("days_left", "fr_words", "en_words"),
    [
        (7, "dans 7 jours, le 2 avril 2026", "in 7 days, on 2 April 2026"),
        (1, "demain", "tomorrow"),
        (0, "aujourd'hui", "today"),
        (-2, "en retard", "overdue"),
    ],
)
def test_staff_reminder(days_left: int, fr_words: str, en_words: str) -> None:
    fr = mail("staff_reminder", "fr", days_left=days_left)
    assert fr_words in fr.text
    assert "2 avril 2026" in fr.subject
    en = mail("staff_reminder", "en", days_left=days_left)
    assert en_words in en.text
    assert "2 April 2026" in en.subject
    for text in (fr.text, en.text):
        assert STATUS_URL not in text
        assert "Exemple SAS" not in text


@pytest.mark.parametrize(
    ("request_type", "fr_words", "en_words"),
    [
        ("access", "du droit d'accès", "your right of access"),
        ("rectification", "du droit de rectification", "your right to rectification"),
        ("erasure", "du droit à l'effacement", "your right to erasure"),
        ("restriction", "du droit à la limitation du traitement", "your right to restriction"),
        ("portability", "du droit à la portabilité", "your right to data portability"),
        ("objection", "du droit d'opposition", "your right to object"),
    ],
)
def test_request_type_in_words(request_type: str, fr_words: str, en_words: str) -> None:
    assert fr_words in mail("acknowledgement", "fr", request_type=request_type).text
    assert en_words in mail("acknowledgement", "en", request_type=request_type).text


def test_preformatted_dates_pass_through() -> None:
    text = mail("acknowledgement", "fr", received_date="02/03/2026", due_date="02/04/2026").text
    assert "02/03/2026" in text
    assert "02/04/2026" in text


@pytest.mark.parametrize(
    ("value", "fr", "en"),
    [
        (date(2026, 3, 2), "2 mars 2026", "2 March 2026"),
        (date(2026, 1, 1), "1er janvier 2026", "1 January 2026"),
        (date(2026, 2, 28), "28 février 2026", "28 February 2026"),
        (date(2026, 8, 15), "15 août 2026", "15 August 2026"),
        (date(2026, 12, 31), "31 décembre 2026", "31 December 2026"),
    ],
)
def test_longdate(value: date, fr: str, en: str) -> None:
    template = templates.environment.from_string("{{ d | longdate }}")
    assert template.render(d=value, mail_language="fr") == fr
    assert template.render(d=value, mail_language="en") == en


def test_missing_variable_raises() -> None:
    context = full_context()
    del context["code"]
    with pytest.raises(UndefinedError):
        render("verification_code", language="fr", default_language="fr", context=context)


def test_missing_outcome_field_raises() -> None:
    with pytest.raises(UndefinedError):
        mail("completion", "en", outcomes=[{"system": "CRM"}])


def test_unknown_template_raises_key_error() -> None:
    with pytest.raises(KeyError):
        render("newsletter", language="fr", default_language="fr", context=full_context())


def test_subject_stays_on_one_line() -> None:
    rendered = mail("cancellation", "en", request_id="req_1\r\nBcc: someone@example.org")
    assert "\n" not in rendered.subject
    assert "\r" not in rendered.subject


@pytest.mark.parametrize(
    ("requested", "default", "expected"),
    [
        ("fr", "en", "fr"),
        ("fr-CA", "en", "fr"),
        ("FR", "en", "fr"),
        ("fr_BE", "en", "fr"),
        ("en-GB", "fr", "en"),
        ("EN", "fr", "en"),
        ("de", "fr", "fr"),
        ("de-DE", "en", "en"),
        ("", "fr", "fr"),
        (None, "en", "en"),
        (None, "fr-FR", "fr"),
        ("es", "de", "en"),
        (None, "", "en"),
        ("frx", "en", "en"),
    ],
)
def test_pick_language(requested: str | None, default: str, expected: str) -> None:
    assert pick_language(requested, default) == expected


def test_render_falls_back_to_default_language() -> None:
    rendered = render(
        "acknowledgement", language="de-AT", default_language="fr", context=full_context()
    )
    assert rendered.language == "fr"
    assert "Bonjour" in rendered.text


def test_staff_task_names_the_system_and_holds_no_personal_data() -> None:
    fr = mail("staff_task", "fr")
    assert "« Caisse »" in fr.text
    assert "Caisse" in fr.subject
    en = mail("staff_task", "en")
    assert '"Caisse"' in en.text
    assert "no personal data" in en.text
