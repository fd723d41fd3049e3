"""Import direction and size limits (STYLE.md rules 1, 8 and 10), checked each run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BANNED = {
    "engine": {"gradio", "webui"},
    "convert": {"gradio", "webui", "engine"},
    "webui": {"convert"},
}
MODULE_LINES, FUNCTION_LINES = 400, 60


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = [
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    ]
    names += [
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
    ]
    return names


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(BANNED))
def test_import_direction(package):
    for path in sources(package):
        roots = {name.split(".")[0] for name in imports(path)}
        assert not roots & BANNED[package], path


def test_engine_uses_only_the_public_api_of_convert():
    # The engine converts on the fly, but only through names convert/__init__ exports.
    for path in sources("engine"):
        assert not [n for n in imports(path) if n.startswith("convert.")], path


def test_each_mlx_lm_symbol_is_imported_in_one_module():
    seen: dict[tuple[str, str], Path] = {}
    for package in ("engine", "convert", "webui"):
        for path in sources(package):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "mlx_lm"
                ):
                    for alias in node.names:
                        key = (node.module, alias.name)
                        assert key not in seen, f"{key} in {seen.get(key)} and {path}"
                        seen[key] = path


@pytest.mark.parametrize("package", ["engine", "convert", "webui", "tests"])
def test_size_limits(package):
    for path in sources(package):
        text = path.read_text()
        assert len(text.splitlines()) <= MODULE_LINES, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body[1:] if ast.get_docstring(node) else node.body
                length = body[-1].end_lineno - body[0].lineno + 1
                assert length <= FUNCTION_LINES, (
                    f"{path}:{node.name} has {length} lines"
                )
