"""How the web UI behaves: built once from the command line, passed to every tab."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_UPDATE_INTERVAL_S = 0.05
DEFAULT_QUEUE_SIZE = 32
DEFAULT_MAX_TOKENS = 256
MAX_SIDES = 4


@dataclass(frozen=True)
class UISettings:
    """Settings of one web UI.

    Attributes:
        default_model: The model the pickers start on (a loaded model's name).
        arena_db: SQLite file for blind-mode votes.
        export_dir: Where chat exports are written before download.
        search_dirs: Folders whose subdirectories may be MLX models (``models``).
        update_interval_s: Streaming answers redraw at most this often (and on finish).
        queue_size: Generations that may wait in the UI's queue; more are refused.
        max_tokens: The max-tokens slider's starting value.
        engine_timeout_s: How long the Models tab waits for a busy engine's memory.
    """

    default_model: str
    arena_db: Path
    export_dir: Path
    search_dirs: tuple[Path, ...] = (Path("models"),)
    update_interval_s: float = DEFAULT_UPDATE_INTERVAL_S
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_tokens: int = DEFAULT_MAX_TOKENS
    engine_timeout_s: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.update_interval_s <= 5:
            raise ValueError("update_interval_s must be in (0, 5] seconds.")
        if self.queue_size < 1 or self.max_tokens < 1:
            raise ValueError("queue_size and max_tokens must be >= 1.")
