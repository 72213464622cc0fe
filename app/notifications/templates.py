"""Plain-text e-mails to data subjects and staff, rendered from templates shipped in the package.

Each template lives in ``templates/<language>/<name>.txt`` and starts with a ``Subject: ...``
line, a blank line, then the body. Templates are loaded through the package (not the working
directory) so that ``dsr`` renders the same mails from a regular, non-editable install.

The environment is strict on purpose: a variable the caller forgot raises instead of silently
sending a mail with a hole in it (a deadline or a complaint address that is missing is a
compliance defect, not a cosmetic one). Mail is plain text, so nothing is HTML-escaped.

Every template receives ``request_id``, ``request_type``, ``status_url`` (the status page; never
a token: mail is stored and forwarded in clear), ``received_date``, ``due_date`` and
``organisation`` (the sender's name, may be empty). Dates may be ``datetime.date`` objects,
which the ``longdate`` filter spells out in the mail's language, or pre-formatted strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from jinja2 import Environment, PackageLoader, StrictUndefined, pass_context
from jinja2.runtime import Context

SUPPORTED_LANGUAGES: frozenset[str] = frozenset({"fr", "en"})
FALLBACK_LANGUAGE = "en"

TEMPLATE_NAMES: frozenset[str] = frozenset(
    {
        "verification_code",
        "acknowledgement",
        "extension",
        "rejection",
        "expiry",
        "cancellation",
        "completion",
        "export_reissued",
        "staff_reminder",
        "staff_task",
    }
)

# Used when the caller names no supervisory authority: the service's default country is France,
# and a refusal that does not name where to complain would not meet GDPR Art. 12(4).
DEFAULT_AUTHORITY_NAME = "CNIL"
DEFAULT_AUTHORITY_URL = "https://www.cnil.fr/fr/plaintes"

# The name of the variable the filters read to know the mail's language. Set by ``render`` after
# the caller's context, so a caller cannot make a filter speak another language than the text.
_LANGUAGE_VAR = "mail_language"

_MONTHS: dict[str, tuple[str, ...]] = {
    "fr": (
        "janvier",
        "février",
        "mars",
        "avril",
        "mai",
        "juin",
        "juillet",
        "août",
        "septembre",
        "octobre",
        "novembre",
        "décembre",
    ),
    "en": (
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ),
}

# The right being exercised, as a noun phrase that reads well after "du" / "the" and also in a
# staff reminder (hence no "your data" in it).
REQUEST_TYPE_WORDS: dict[str, dict[str, str]] = {
    "fr": {
        "access": "droit d'accès",
        "rectification": "droit de rectification",
        "erasure": "droit à l'effacement",
        "restriction": "droit à la limitation du traitement",
        "portability": "droit à la portabilité",
        "objection": "droit d'opposition",
    },
    "en": {
        "access": "right of access",
        "rectification": "right to rectification",
        "erasure": "right to erasure",
        "restriction": "right to restriction of processing",
        "portability": "right to data portability",
        "objection": "right to object",
    },
}

# Why a request was refused, in full sentences: GDPR Art. 12(4) wants the reasons, not a code.
REJECTION_REASON_WORDS: dict[str, dict[str, str]] = {
    "fr": {
        "identity_not_verified": (
            "Nous n'avons pas pu vérifier votre identité. Sans cette vérification, nous ne "
            "pouvons pas donner suite à votre demande sans risquer de communiquer ou de modifier "
            "les données d'une autre personne."
        ),
        "manifestly_unfounded": (
            "Votre demande est manifestement infondée au sens de l'article 12, paragraphe 5, "
            "du règlement général sur la protection des données (RGPD)."
        ),
        "excessive": (
            "Votre demande est excessive, notamment en raison de son caractère répétitif, au "
            "sens de l'article 12, paragraphe 5, du règlement général sur la protection des "
            "données (RGPD)."
        ),
        "other": (
            "Votre demande ne remplit pas les conditions qui nous permettraient d'y donner suite."
        ),
    },
    "en": {
        "identity_not_verified": (
            "We could not verify your identity. Without this check, acting on your request could "
            "disclose or change another person's data."
        ),
        "manifestly_unfounded": (
            "Your request is manifestly unfounded within the meaning of Article 12(5) of the "
            "General Data Protection Regulation (GDPR)."
        ),
        "excessive": (
            "Your request is excessive, in particular because of its repetitive character, within "
            "the meaning of Article 12(5) of the General Data Protection Regulation (GDPR)."
        ),
        "other": "Your request does not meet the conditions that would allow us to act on it.",
    },
}


# What each system did, in plain words for the subject (status page and completion e-mail).
OUTCOME_WORDS: dict[str, dict[str, str]] = {
    "fr": {
        "found": "nous détenons des données vous concernant ; elles figurent dans votre dossier",
        "not_found": "aucune donnée vous concernant",
        "erased": "vos données ont été effacées",
        "retained": (
            "vos données ont été effacées, sauf celles que la loi nous oblige à conserver "
            "(détail ci-dessous)"
        ),
        "rectified": "vos données ont été rectifiées",
        "restricted": "l'utilisation de vos données a été limitée",
        "objection_applied": "votre opposition a été appliquée",
    },
    "en": {
        "found": "we hold data about you; it is included in your file",
        "not_found": "no data about you",
        "erased": "your data was erased",
        "retained": (
            "your data was erased, except what the law obliges us to keep (details below)"
        ),
        "rectified": "your data was corrected",
        "restricted": "the use of your data was restricted",
        "objection_applied": "your objection was applied",
    },
}


def outcome_summary(outcome: str | None, language: str | None, default: str) -> str:
    """One system's outcome in plain words, in the subject's language."""
    words = OUTCOME_WORDS[pick_language(language, default)]
    return words.get(str(outcome), str(outcome))


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    text: str
    language: str


def _primary_subtag(tag: str | None) -> str:
    if not tag:
        return ""
    return tag.strip().replace("_", "-").split("-", 1)[0].lower()


def pick_language(requested: str | None, default: str) -> str:
    """The template language for a BCP 47 tag: its primary subtag if we have templates for it.

    Regional variants share their language's templates (``fr-CA`` reads French), anything else
    gets the configured default, and a default we have no templates for falls back to English
    rather than failing to send a legally required mail.
    """
    for candidate in (_primary_subtag(requested), _primary_subtag(default)):
        if candidate in SUPPORTED_LANGUAGES:
            return candidate
    return FALLBACK_LANGUAGE


def _language_of(context: Context) -> str:
    language = context.get(_LANGUAGE_VAR)
    return language if language in SUPPORTED_LANGUAGES else FALLBACK_LANGUAGE


@pass_context
def longdate(context: Context, value: object) -> str:
    """``2 mars 2026`` / ``2 March 2026``, without the process-wide, thread-unsafe ``locale``."""
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value)  # dates that came through JSON
        except ValueError:
            return str(value)  # already formatted by the caller
    if not isinstance(value, date):
        return str(value)
    language = _language_of(context)
    month = _MONTHS[language][value.month - 1]
    day = "1er" if language == "fr" and value.day == 1 else str(value.day)
    return f"{day} {month} {value.year}"


@pass_context
def request_kind(context: Context, value: object) -> str:
    """The right being exercised, in words; an unknown type is shown as is rather than lost."""
    return REQUEST_TYPE_WORDS[_language_of(context)].get(str(value), str(value))


@pass_context
def rejection_reason(context: Context, value: object) -> str:
    """The refusal reason in a full sentence; unknown codes read as the generic ``other``."""
    words = REJECTION_REASON_WORDS[_language_of(context)]
    return words.get(str(value), words["other"])


@pass_context
def outcome_words(context: Context, value: object) -> str:
    return OUTCOME_WORDS[_language_of(context)].get(str(value), str(value))


def _build_environment() -> Environment:
    env = Environment(
        loader=PackageLoader("app.notifications", "templates"),
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        # The templates ship with the package and never change under a running process: no
        # modification-time check (a stat call) on every mail rendered.
        auto_reload=False,
    )
    env.filters["longdate"] = longdate
    env.filters["request_kind"] = request_kind
    env.filters["rejection_reason"] = rejection_reason
    env.filters["outcome_words"] = outcome_words
    env.globals["default_authority_name"] = DEFAULT_AUTHORITY_NAME
    env.globals["default_authority_url"] = DEFAULT_AUTHORITY_URL
    return env


environment = _build_environment()


def render(
    name: str,
    *,
    language: str | None,
    default_language: str,
    context: Mapping[str, object],
) -> RenderedMail:
    """Render mail ``name`` in the best language for ``language``.

    Raises ``KeyError`` for an unknown template name and ``jinja2.UndefinedError`` when the
    context lacks a variable the template uses.
    """
    if name not in TEMPLATE_NAMES:
        raise KeyError(name)
    chosen = pick_language(language, default_language)
    template = environment.get_template(f"{chosen}/{name}.txt")
    rendered = template.render({**context, _LANGUAGE_VAR: chosen})
    head, separator, body = rendered.partition("\n\n")
    if not separator or not head.startswith("Subject:"):
        raise ValueError(
            f"template {chosen}/{name}.txt must start with 'Subject: ...' and a blank line"
        )
    # One line, whatever the context held: a newline in a header would be a header injection.
    subject = " ".join(head.removeprefix("Subject:").split())
    text = body.strip("\n").rstrip() + "\n"
    return RenderedMail(subject=subject, text=text, language=chosen)
