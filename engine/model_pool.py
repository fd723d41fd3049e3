"""The models one engine holds, by name, shared by the HTTP API and the web UI."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from convert import default_cache_dir
from engine.memory_budget import InsufficientMemory
from engine.model_roots import allowed_source, inside_roots
from engine.runtime import Engine, Model

DEFAULT_MODEL_ROOTS = (Path("models"),)


def model_name(src: str) -> str:
    """The name a model source is served under: a path's name, else ``src`` itself."""
    path = Path(src).expanduser()
    if path.exists():
        return path.stem if path.suffix == ".gguf" else path.resolve().name
    return src


class ModelPool(Mapping[str, Model]):
    """Loaded models of one engine by name; safe to use from any thread.

    Reading it is a ``Mapping`` (what ``make_app`` serves); ``load``,
    ``get_or_load`` and ``unload`` change it, so a model loaded in the UI is also
    served over HTTP.

    Args:
        engine: The engine that holds the models.
        models: Models already loaded on ``engine``, by name.
        roots: Folders requests may load models from (``get_or_load``); Silica's
            cache (catalog models, conversions) is always one.
        cache_dir: Silica's cache; ``default_cache_dir()`` if None.
    """

    def __init__(
        self,
        engine: Engine,
        models: Mapping[str, Model] | None = None,
        *,
        roots: Sequence[Path] = DEFAULT_MODEL_ROOTS,
        cache_dir: Path | None = None,
    ):
        self.engine = engine
        self.roots = tuple(Path(r) for r in roots)
        self.cache_dir = cache_dir or default_cache_dir()
        self._models: dict[str, Model] = dict(models or {})  # oldest use first
        self._sources: dict[str, str] = {}  # name -> what it was loaded from
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # one load at a time: no double loads

    def __getitem__(self, name: str) -> Model:
        with self._lock:
            model = self._models.pop(name)  # KeyError when absent, as a Mapping
            self._models[name] = model  # now the most recently used
            return model

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._models))

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._models

    def items(self) -> list[tuple[str, Model]]:  # type: ignore[override]
        """A snapshot, safe while another thread loads or unloads."""
        with self._lock:
            return list(self._models.items())

    def values(self) -> list[Model]:  # type: ignore[override]
        with self._lock:
            return list(self._models.values())

    def load(self, src: str, *, name: str | None = None) -> Model:
        """Load what the operator names (command-line flags, scripts): any source.

        Args:
            src: A catalog name (downloaded if needed), an MLX or Hugging Face
                directory, a ``.gguf`` file or a Hugging Face repo id.
            name: The name to serve it under; default ``model_name(src)``.

        Raises:
            ValueError, ModelFileError, CatalogError: The model cannot be loaded.
            InsufficientMemory: It does not fit beside the loaded models.
        """
        return self._load(src, name or model_name(src), make_room=False)

    def get_or_load(self, src: str) -> Model:
        """The model a request names, loading it from the allow-list if needed.

        Args:
            src: A loaded model's name; else a catalog model already in the cache,
                or a model directory or ``.gguf`` file inside ``roots`` (checked
                after resolving symlinks). Nothing is ever downloaded.

        Raises:
            ValueError: Nothing to pick, or ``src`` is not on the allow-list.
            ModelFileError: The model's files are malformed.
            InsufficientMemory: It does not fit even after unloading the least
                recently used models.
        """
        if not src or not src.strip():
            raise ValueError("Pick a model first.")
        src = src.strip()
        with self._lock:
            known = self._sources.get(src)
        if src in self:
            return self[src]
        if known is not None:  # loaded before by name, then unloaded: reload it
            return self._load(known, src, make_room=True)
        allowed = allowed_source(src, self.roots, self.cache_dir)
        return self._load(allowed, model_name(src), make_room=True)

    def inside_roots(self, path: str | Path) -> Path:
        """The real path of ``path`` if it lies inside ``roots`` (see model_roots).

        Raises:
            ValueError: It does not, or does not exist.
        """
        return inside_roots(path, self.roots)

    def _load(self, src: str, name: str, *, make_room: bool) -> Model:
        with self._load_lock:
            if name in self:
                return self[name]
            try:
                model = self.engine.load(src, name=name)
            except InsufficientMemory as e:
                if not make_room or not self._unload_for(e.shortfall_bytes):
                    raise
                model = self.engine.load(src, name=name)
            with self._lock:
                self._models[name] = model
                self._sources[name] = src
            return model

    def _unload_for(self, nbytes: int) -> bool:
        """Unload the least recently used models that free ``nbytes`` together;
        none when all of them would not."""
        victims, freed = [], 0
        for name, model in self.items():
            if freed >= nbytes:
                break
            victims.append(name)
            freed += round(model.info.memory_gb * 1e9)
        if freed < nbytes:
            return False
        for name in victims:
            print(f"silica: unloading {name} to make room", file=sys.stderr)
            self.unload(name)
        return True

    def unload(self, name: str) -> bool:
        """Free a model's memory (``get_or_load(name)`` loads it again); False if it
        was not loaded."""
        with self._lock:
            model = self._models.pop(name, None)
        if model is None:
            return False
        self.engine.unload(name)
        return True

    def weights_gb(self) -> float:
        """Memory the loaded models' weights take (GB)."""
        return sum(model.info.memory_gb for model in self.values())
