"""--safety-policy and --no-safety, as every command parses them."""

from __future__ import annotations

import pytest

from engine.cli import build_parser
from engine.safety.flags import policy_from_args
from engine.safety.policy import Policy


@pytest.mark.parametrize("command", ["generate", "chat", "serve"])
def test_flags_choose_the_policy(command, tmp_path):
    parser = build_parser()
    base = [command, "--model", "m"] + (
        ["--prompt", "x"] if command == "generate" else []
    )
    assert policy_from_args(parser.parse_args(base)) == Policy()
    assert policy_from_args(parser.parse_args([*base, "--no-safety"])) is None
    path = tmp_path / "p.toml"
    path.write_text('[categories.hate]\naction = "warn"\nthreshold = 0.8\n')
    policy = policy_from_args(parser.parse_args([*base, "--safety-policy", str(path)]))
    assert (
        policy.rules["hate"].action == "warn" and policy.rules["hate"].threshold == 0.8
    )
    with pytest.raises(SystemExit):  # one or the other
        parser.parse_args([*base, "--no-safety", "--safety-policy", str(path)])
    path.write_text("[categories.hate]\naction = 'shout'\n")
    with pytest.raises(ValueError, match="Unknown action 'shout'"):
        policy_from_args(parser.parse_args([*base, "--safety-policy", str(path)]))
