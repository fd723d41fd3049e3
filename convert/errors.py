"""Errors a model file can raise, each naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

CORRUPT_FIX = "The file is truncated or corrupt; download or convert it again"


class ModelFileError(ValueError):
    """A model file is missing, malformed, truncated or of an unsupported kind.

    Attributes:
        path: The offending file or directory.
        problem: What is wrong, in a few words.
    """

    def __init__(self, path: str | Path, problem: str, fix: str = "") -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}." + (f" {fix}." if fix else ""))
