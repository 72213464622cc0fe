"""Every file the service reads at run time ships in a regular (non-editable) install: the
README's first command installs with ``pip install .``, where only ``package-data`` goes in.
(The suite itself runs from the source tree, so a forgotten pattern would pass unnoticed.)"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_non_python_file_of_the_app_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["app"]
    app = ROOT / "app"
    missing = [
        str(path.relative_to(app))
        for path in app.rglob("*")
        if path.is_file()
        and path.suffix not in (".py", ".pyc")
        and "__pycache__" not in path.parts
        and not any(fnmatch.fnmatch(str(path.relative_to(app)), p) for p in patterns)
    ]
    assert missing == [], f"add to [tool.setuptools.package-data] in pyproject.toml: {missing}"
