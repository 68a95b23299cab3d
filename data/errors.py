"""The one error of the data layer: a malformed file, named with its path and line."""

from __future__ import annotations


class BadInputFile(ValueError):
    """A data file is malformed; names the file and (1-based) line so the user can fix it."""

    exit_code = 2

    def __init__(self, path: str, line: int | None, problem: str, hint: str = "") -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        self.hint = hint
        where = f"{path}:{line}" if line is not None else str(path)
        self.message = f"{where}: {problem}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message
