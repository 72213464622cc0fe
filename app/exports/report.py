"""``report.html``: the Art. 15 answer in words, in the request's language (French or
English). Self-contained (inline style, no script, no external asset), and every value it
shows is escaped: a record holding ``<script>`` is shown as text."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from app.notifications.templates import REQUEST_TYPE_WORDS, outcome_summary, pick_language

WORDS: dict[str, dict[str, Any]] = {
    "fr": {
        "title": "Réponse à votre demande d'accès",
        "intro": (
            "Ce document accompagne vos données. Il indique, pour chacun de nos systèmes, ce "
            "qu'il détient sur vous et les informations prévues par l'article 15 du RGPD."
        ),
        "reference": "Référence",
        "request_type": "Demande",
        "requested_by": "Demandée par",
        "received": "Reçue le",
        "answered": "Traitée le",
        "controller": "Responsable du traitement",
        "no_organisation": "non précisé",
        "systems": "Ce que détient chacun de nos systèmes",
        "no_systems": (
            "Aucun de nos systèmes ne traite de données concernées par ce type de demande."
        ),
        "category": "Catégorie de données",
        "records": "Enregistrements",
        "first_rows": "les %d premiers ici, tous dans les fichiers",
        "purposes": "Finalités",
        "legal_basis": "Base légale",
        "recipients": "Destinataires",
        "retention": "Durée de conservation",
        "source": "Source des données",
        "automated": "Décision automatisée, profilage",
        "not_stated": "non précisé",
        "no_recipients": "aucun destinataire externe",
        "no_automated": "aucune décision fondée exclusivement sur un traitement automatisé",
        "files_title": "Les fichiers de ce dossier",
        "files_intro": (
            "data/<système>.json contient vos données telles que le système les a transmises ; "
            "data/<système>/<catégorie>.csv les présente en tableau, pour un tableur. "
            "manifest.json liste chaque fichier avec son empreinte SHA-256 ; manifest.jws en "
            "est la signature, qui prouve que le dossier est authentique et complet."
        ),
        "rights_title": "Vos autres droits",
        "rights": [
            "Faire rectifier des données inexactes (article 16 du RGPD).",
            "Faire effacer vos données (article 17).",
            "Faire limiter leur utilisation (article 18).",
            "Recevoir les données que vous nous avez fournies dans un format réutilisable "
            "(article 20).",
            "Vous opposer à un traitement, à tout moment pour la prospection (article 21).",
            "Définir des directives sur le sort de vos données après votre décès (article 85 "
            "de la loi Informatique et Libertés).",
        ],
        "complaint_title": "Réclamation",
        "complaint": "Vous pouvez introduire une réclamation auprès de l'autorité de contrôle :",
        "remedy": "Vous pouvez aussi exercer un recours juridictionnel.",
        "authenticity": (
            "Ce dossier est signé : la clé publique de vérification est publiée par le "
            "service (/v1/export-keys)."
        ),
    },
    "en": {
        "title": "Answer to your access request",
        "intro": (
            "This document comes with your data. For each of our systems it says what it holds "
            "about you and gives the information required by Article 15 GDPR."
        ),
        "reference": "Reference",
        "request_type": "Request",
        "requested_by": "Requested by",
        "received": "Received on",
        "answered": "Answered on",
        "controller": "Controller",
        "no_organisation": "not stated",
        "systems": "What each of our systems holds",
        "no_systems": "None of our systems processes data covered by this type of request.",
        "category": "Category of data",
        "records": "Records",
        "first_rows": "the first %d here, all of them in the files",
        "purposes": "Purposes",
        "legal_basis": "Legal basis",
        "recipients": "Recipients",
        "retention": "Retention period",
        "source": "Source of the data",
        "automated": "Automated decision-making, profiling",
        "not_stated": "not stated",
        "no_recipients": "no external recipient",
        "no_automated": "no decision based solely on automated processing",
        "files_title": "The files in this package",
        "files_intro": (
            "data/<system>.json holds your data as the system sent it; "
            "data/<system>/<category>.csv shows it as a table, for a spreadsheet. "
            "manifest.json lists every file with its SHA-256 checksum; manifest.jws is its "
            "signature, which proves the package is authentic and complete."
        ),
        "rights_title": "Your other rights",
        "rights": [
            "Have inaccurate data corrected (Article 16 GDPR).",
            "Have your data erased (Article 17).",
            "Have its use restricted (Article 18).",
            "Receive the data you provided in a reusable format (Article 20).",
            "Object to a processing, at any time for direct marketing (Article 21).",
        ],
        "complaint_title": "Complaints",
        "complaint": "You may lodge a complaint with the supervisory authority:",
        "remedy": "You also have the right to an effective judicial remedy.",
        "authenticity": (
            "This package is signed: the public key to check it is published by the service "
            "(/v1/export-keys)."
        ),
    },
}

_env = Environment(
    loader=PackageLoader("app.exports", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_report(
    *, language: str | None, default_language: str, context: dict[str, Any]
) -> tuple[str, str]:
    """The report's HTML and the language it was written in."""
    lang = pick_language(language, default_language)
    request = dict(context["request"])
    request["type_words"] = REQUEST_TYPE_WORDS[lang].get(request["type"], request["type"])
    systems = [
        {**system, "summary": outcome_summary(system["outcome"], lang, default_language)}
        for system in context["systems"]
    ]
    html = _env.get_template("report.html").render(
        **{**context, "request": request, "systems": systems}, t=WORDS[lang], lang=lang
    )
    return html, lang
