"""The command-line flags that choose the safety policy, shared by every command."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.safety.policy import Policy


def add_safety_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--safety-policy FILE`` and ``--no-safety``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--safety-policy",
        type=Path,
        metavar="FILE",
        help="a TOML safety policy (per category: allow, warn, redact or block; "
        "see README); default: the built-in policy",
    )
    group.add_argument(
        "--no-safety",
        action="store_true",
        help="turn the safety filter off (prompts and answers pass unscreened)",
    )


def policy_from_args(args: argparse.Namespace) -> Policy | None:
    """The policy the flags ask for; None when the filter is off.

    Raises:
        ValueError: The policy file is unreadable or invalid.
    """
    if args.no_safety:
        return None
    return Policy.from_file(args.safety_policy) if args.safety_policy else Policy()
