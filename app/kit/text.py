"""Text that may hold lone surrogates, written as UTF-8.

JSON can write any UTF-16 code unit as an escape, so ``"\\ud800"`` (a surrogate with no
partner) is valid JSON, and Python's ``json`` reads it as a one-character ``str``; but no
UTF-8 text can hold that character, and ``str.encode`` refuses it. Where such text is
written, these give it a form that keeps the rest of the text byte for byte, and cost
nothing for text without one (the usual case): the ``str.encode`` fast path runs first.
"""

from __future__ import annotations

import re

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def without_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD, the replacement character."""
    return _LONE_SURROGATE.sub("\ufffd", text)


def utf8_shown(text: str) -> bytes:
    """``text`` as UTF-8 for people to read (CSV, HTML, messages): a lone surrogate is
    shown as U+FFFD."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return without_surrogates(text).encode()


def utf8_json(text: str) -> bytes:
    """``text``, JSON written by ``json.dumps(..., ensure_ascii=False)``, as UTF-8 that
    reads back as the same value: a lone surrogate is written as its ``\\uXXXX`` escape.
    That is exact because ``json`` leaves raw only inside strings the characters it does
    not escape, and a surrogate there is never after an unescaped backslash. (Two
    adjacent ones of a pair would read back as the character they encode; ``json`` never
    reads text into such a ``str``.)"""
    return text.encode("utf-8", "backslashreplace")
