"""What can be wrong with a dataset, and the errors that report it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from paddy.errors import PaddyError

# How many offending files/rows an error message names before it only counts the rest.
SHOWN_PER_KIND = 5


@dataclass(frozen=True)
class DataProblem:
    """One bad sample or one bad class, found while indexing or validating a dataset.

    ``kind`` is one of ``missing_file``, ``unreadable_image``, ``unknown_label``, ``empty_class``;
    ``where`` names the file, CSV row or class; ``detail`` says what is wrong with it.
    """

    kind: str
    where: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.detail}" if self.detail else self.where


class DataSourceError(PaddyError):
    """The dataset cannot be read at all (missing root, CSV without the expected columns, ...)."""


class DataValidationError(PaddyError):
    """The dataset has bad samples and ``data.on_bad_image=error``."""

    def __init__(self, problems: list[DataProblem], source: str):
        self.problems = problems
        super().__init__(summarize_problems(problems, source, hint=True))


_KIND_TEXT = {
    "missing_file": "missing file",
    "unreadable_image": "unreadable or corrupt image",
    "unknown_label": "unknown label",
    "empty_class": "empty class",
}


def summarize_problems(problems: list[DataProblem], source: str, hint: bool = False) -> str:
    """One readable block: counts per kind, then the first few culprits of each kind."""
    counts = Counter(p.kind for p in problems)
    head = ", ".join(f"{n} {_KIND_TEXT.get(k, k)}{'s' if n > 1 else ''}" for k, n in counts.items())
    lines = [f"{source}: {len(problems)} problem{'s' if len(problems) > 1 else ''} in the dataset ({head})"]
    for kind in counts:
        of_kind = [p for p in problems if p.kind == kind]
        for problem in of_kind[:SHOWN_PER_KIND]:
            lines.append(f"  - {_KIND_TEXT.get(kind, kind)}: {problem}")
        if len(of_kind) > SHOWN_PER_KIND:
            lines.append(f"  - ... and {len(of_kind) - SHOWN_PER_KIND} more {_KIND_TEXT.get(kind, kind)}s")
    if hint:
        lines.append("Fix or remove them, or set data.on_bad_image=skip to drop them with a warning.")
    return "\n".join(lines)
