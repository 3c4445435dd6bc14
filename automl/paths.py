"""Names that become folders and file names: plain names only, and where a run's files go.

A study name is the run folder (``runs/NAME``) and part of file names, so it must never climb
out of its folder (``..``, ``/``), hide as a dot-file, pass for an option (``-x``) or carry
control characters into a terminal or a path.
"""

from __future__ import annotations

import re
from pathlib import Path

from automl.errors import UserError

__all__ = ["MAX_NAME_LENGTH", "RUNS", "JOURNAL", "check_study_name"]

RUNS = Path("runs")  # where run folders go without --out (runs/STUDY_NAME, runs/train-NAME)
JOURNAL = "study.journal"  # a run folder's study, without --storage

MAX_NAME_LENGTH = 128
_PLAIN_NAME = re.compile(r"\w[\w.-]*")  # \w: letters and digits of any script, and "_"


def check_study_name(name: str) -> str:
    """``name`` when it is a plain name; else a one-line UserError naming it and the rule."""
    if len(name) <= MAX_NAME_LENGTH and _PLAIN_NAME.fullmatch(name):
        return name
    shown = name if len(name) <= 60 else name[:57] + "..."
    raise UserError(f"study name {shown!r} is not allowed: it names the run folder, so use at "
                    f"most {MAX_NAME_LENGTH} letters, digits, '_', '-' and '.', starting with a "
                    "letter, digit or '_'")
