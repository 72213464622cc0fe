"""Identity proof errors. A wrong code keeps its side effect (one attempt fewer): the unit of
work commits before the error is answered (``keeps_changes``)."""

from __future__ import annotations

from app.errors import Conflict, InvalidInput


class WrongCode(InvalidInput):
    slug = "wrong-code"
    keeps_changes = True


class CodeBurnt(Conflict):
    slug = "code-burnt"
    keeps_changes = True


class CodeExpired(Conflict):
    slug = "code-expired"
