"""Domain errors: each carries a message a user can act on, converted to exit codes at the edges."""

from __future__ import annotations

from data.errors import BadInputFile

__all__ = [
    "USER_ERRORS",
    "AssistantError",
    "BadInputFile",
    "GenerationFailed",
    "IntegrityError",
    "ModelUnavailable",
    "UsageError",
]


class AssistantError(Exception):
    """Base of every error the product reports to a user; `hint` says what to do next."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class UsageError(AssistantError):
    """The command line asks for something impossible (unknown adapter, bad flag value)."""

    exit_code = 2


class ModelUnavailable(AssistantError):
    """A model or its files could not be found, verified or loaded."""

    exit_code = 1


class IntegrityError(ModelUnavailable):
    """A model file failed its checksum: it is refused, never loaded."""


class GenerationFailed(AssistantError):
    """The engine failed while answering one query; other queries may still succeed."""


#: Everything the edges (CLI, TUI) turn into a message instead of a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (AssistantError, BadInputFile)
