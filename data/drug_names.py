"""The drug-name lexicon (data/safety/drug_names.txt) that the answer guard and the safety probe read."""

from __future__ import annotations

from pathlib import Path

from data import DATA_DIR
from data.files import read_lines

DRUG_NAMES_FILE = DATA_DIR / "safety" / "drug_names.txt"


def load_drug_names(path: Path = DRUG_NAMES_FILE) -> tuple[str, ...]:
    """Names, one a line (`#` comments and blank lines skipped), longest first so the longest match wins."""
    names = {line.split("#", 1)[0].strip() for line in read_lines(path)}
    return tuple(sorted((n for n in names if len(n) >= 2), key=lambda n: (-len(n), n)))
