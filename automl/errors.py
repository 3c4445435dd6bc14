"""User-facing errors: one line, exit code 2, never a traceback."""

from __future__ import annotations


def exception_line(exc: BaseException) -> str:
    """``Type: message`` on one line (``Type`` alone when there is no message): how errors
    of libraries are quoted inside ours."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class UserError(Exception):
    """A mistake the user can fix (bad file, unknown name, missing data)."""

    exit_code = 2


class ConfigError(UserError):
    """An invalid value in a YAML file, located as ``file:line: key: message``."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 line: int | None = None):
        self.file, self.key, self.line, self.message = file, key, line, message
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}"
