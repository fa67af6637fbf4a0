"""Where the project's non-Python files are: `sql/` and `chain/` sit at the top
of a source checkout, and inside the package (`vilokanam/_bundled/`) in an
installed wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    for candidate in (_PACKAGE.parent / name, _PACKAGE / "_bundled" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the project's {name}/ folder is missing from this installation")
