"""A result body read as the protocol says, down to text that UTF-8 cannot hold."""

from __future__ import annotations

import re

import pytest

from app.connectors.client import parse_result


def test_a_lone_surrogate_in_a_record_is_read_and_kept() -> None:
    result = parse_result(
        b'{"outcome": "found", "data": {"notes": [{"t": "a \\ud800", "\\udfffk": 1}]}}'
    )
    assert result.data == {"notes": [{"t": "a \ud800", "\udfffk": 1}]}


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"outcome": "found", "message": "\\ud800"}', "message: "),
        (b'{"outcome": "found", "data": {"\\ud800": [{"n": 1}]}}', "data."),  # ".\ufffd...[key]"
        (b'{"outcome": "found", "data": {"n": [{"t": "\\ud800", "x": NaN}]}}', "body: "),
        (b'{"outcome": "found", "data": {"n": [{"t": "\\ud800"}]}', "body: "),
    ],
)
def test_lone_surrogates_anywhere_else_and_other_invalid_json_are_refused(
    body: bytes, where: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(where)) as refused:
        parse_result(body)
    str(refused.value).encode()  # the message is stored: it must be UTF-8
