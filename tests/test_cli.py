"""The `silica` command line: help that explains, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.cli import main
from tests.tiny_gguf import write_tiny_gguf


def test_help_lists_commands_and_convert_help_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "convert" in out and "models" in out
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    out = capsys.readouterr().out
    assert "--bits" in out and "examples:" in out and "bit-exact" in out


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "--version"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stdout.startswith("silica ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["convert", "no-such-model", "-o", "x"], "not a file, a directory"),
        (["convert", "tests"], "needs -o OUT"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_invalid_flag_value_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit) as e:
        main(["convert", "x", "-o", "y", "--bits", "7"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_dry_run_writes_nothing_and_convert_reports(tmp_path, capsys):
    src = tmp_path / "tiny.gguf"
    write_tiny_gguf(src)
    assert main(["convert", str(src), "--dry-run", "-q"]) == 0
    out = capsys.readouterr().out
    assert "output" in out and "memory" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]
    dst = tmp_path / "out"
    assert main(["convert", str(src), "-o", str(dst), "-q"]) == 0
    assert (dst / "silica-manifest.json").exists()
    assert main(["convert", str(src), "-o", str(dst), "-q"]) == 2
    assert "--force" in capsys.readouterr().err


def test_models_list_shows_catalog(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SILICA_CACHE_DIR", str(tmp_path))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert (
        "smollm2-135m-instruct" in out and "not pulled" in out and str(tmp_path) in out
    )
