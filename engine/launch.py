"""The ``silica`` console entry point: get on the CPU fast path, then run the CLI."""

from __future__ import annotations

import sys

from engine.fast_blas import reexec_if_needed


def main() -> int:
    """Re-execute with a fast BLAS preloaded when that helps, then run ``silica``."""
    reexec_if_needed(sys.argv)
    from engine.cli import main as run_cli  # heavy imports only after the re-exec

    return run_cli()
