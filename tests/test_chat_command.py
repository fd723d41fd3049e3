"""`silica generate` and `silica chat` on a tiny random model, and a fake for Ctrl-C."""

from __future__ import annotations

import argparse
import io
import re
from collections.abc import Iterator

import pytest

from convert import ConvertOptions, convert_model
from engine.chat_command import (
    add_chat_parser,
    add_generate_parser,
    generate_to,
    run_chat,
)
from engine.cli import main
from engine.schema import Chunk, SamplingParams, Stats
from tests.tiny_gguf import write_tiny_gguf

FAST = ["--max-tokens", "6", "--seed", "0"]
WORD = "xyz"  # three byte tokens: no merge in the tiny tokenizer applies
STATS = re.compile(r"\[prompt (\d+) tok, cached (\d+), .* tok/s .* GB, (\w+)\]")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("chat")
    write_tiny_gguf(tmp / "tiny.gguf")
    options = ConvertOptions(dtype="float32")
    return str(convert_model(str(tmp / "tiny.gguf"), tmp / "mlx", options).path)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="silica")
    sub = parser.add_subparsers(required=True)
    add_generate_parser(sub)
    add_chat_parser(sub)
    return parser.parse_args(argv)


def run(argv: list[str]) -> int:
    args = parse(argv)
    return args.func(args)


def stats_lines(err: str) -> list[tuple[int, int, str]]:
    return [(int(p), int(c), f) for p, c, f in STATS.findall(err)]


def test_generate_streams_text_and_prints_one_stats_line(tiny_dir, capsys):
    assert run(["generate", "--model", tiny_dir, "--prompt", "hello", *FAST]) == 0
    out, err = capsys.readouterr()
    assert out.endswith("\n")
    [(prompt, cached, finish)] = stats_lines(err)
    assert prompt > 0 and cached == 0 and finish in ("stop", "length")


def test_raw_prompt_skips_the_chat_template(tiny_dir, capsys):
    run(["generate", "--model", tiny_dir, "--prompt", WORD, "--raw", *FAST])
    [(raw, _, _)] = stats_lines(capsys.readouterr().err)
    run(["generate", "--model", tiny_dir, "--prompt", WORD, *FAST])
    [(chat, _, _)] = stats_lines(capsys.readouterr().err)
    run(["generate", "--model", tiny_dir, "--prompt", WORD, "--system", "be", *FAST])
    [(system, _, _)] = stats_lines(capsys.readouterr().err)
    assert raw == len(WORD) and raw < chat < system


def test_prompt_dash_reads_stdin(tiny_dir, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(WORD))
    run(["generate", "--model", tiny_dir, "--prompt", "-", "--raw", *FAST])
    [(prompt, _, _)] = stats_lines(capsys.readouterr().err)
    assert prompt == len(WORD)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--temperature", "-1"], "temperature must be between 0.0 and 2.0"),
        (["--temp", "3"], "temperature must be between"),
        (["--top-p", "2"], "top_p must be between"),
        (["--min-p", "1.5"], "min_p must be between"),
        (["--max-tokens", "0"], "max_tokens must be between"),
        (["--stop", ""], "each stop string must be"),
        (["--raw", "--system", "s"], "--system needs the chat template"),
    ],
)
def test_bad_values_raise_value_error_before_loading(flags, message):
    # "no-such-model" would fail to load: the flags are checked first.
    with pytest.raises(ValueError, match=re.escape(message)):
        run(["generate", "--model", "no-such-model", "--prompt", "hi", *flags])
    if "--raw" not in flags:
        with pytest.raises(ValueError, match=re.escape(message)):
            run(["chat", "--model", "no-such-model", *flags])


def test_sampling_defaults_and_repeatable_stop():
    args = parse(["chat", "--model", "m", "--stop", "a", "--stop", "b"])
    assert (args.max_tokens, args.temperature, args.stop) == (512, 0.7, ["a", "b"])


def test_chat_reuses_the_cache_across_turns_and_reset_forgets(
    tiny_dir, capsys, monkeypatch
):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nagain\n/reset\nx\n"))
    assert run(["chat", "--model", tiny_dir, *FAST]) == 0
    err = capsys.readouterr().err
    (p1, c1, _), (p2, c2, _), (p3, c3, _) = stats_lines(err)
    assert c1 == 0 and p1 <= c2 < p2  # turn 2 reuses turn 1's prompt at least
    assert "history cleared" in err and p3 < p2 and c3 < c2


class FakeStream:
    """Yields ``text`` a character at a time; raises Ctrl-C before ``interrupt_at``."""

    def __init__(self, text: str, interrupt_at: int | None) -> None:
        self.text, self.interrupt_at, self.cancelled = text, interrupt_at, False

    def __iter__(self) -> Iterator[Chunk]:
        for i, ch in enumerate(self.text):
            if i == self.interrupt_at:
                raise KeyboardInterrupt
            yield Chunk(ch)
        yield Chunk("", finish_reason="stop", stats=Stats(prompt_tokens=3))

    def cancel(self) -> None:
        self.cancelled = True


class FakeModel:
    """Answers "abcd"; the turns listed in ``interrupt`` get Ctrl-C after "ab"."""

    def __init__(self, interrupt: set[int]) -> None:
        self.interrupt, self.prompts, self.streams = interrupt, [], []

    def stream(self, prompt, params: SamplingParams) -> FakeStream:
        self.prompts.append(prompt)
        turn = len(self.streams)
        self.streams.append(FakeStream("abcd", 2 if turn in self.interrupt else None))
        return self.streams[-1]


def lines(*items: str):
    feed = iter(items)

    def read_line(prompt: str) -> str:
        item = next(feed, None)
        if item is None:
            raise EOFError
        if item == "^C":
            raise KeyboardInterrupt
        return item

    return read_line


def test_ctrl_c_cancels_the_answer_and_drops_the_turn():
    model, out, err = FakeModel(interrupt={0}), io.StringIO(), io.StringIO()
    read_line = lines("first", "second", "third")
    code = run_chat(
        model, SamplingParams(), system="sys", read_line=read_line, out=out, err=err
    )
    assert code == 0
    assert [s.cancelled for s in model.streams] == [True, False, False]
    assert "ab\n" in out.getvalue() and "cancelled" in err.getvalue()
    system = {"role": "system", "content": "sys"}
    assert model.prompts[1] == [system, {"role": "user", "content": "second"}]
    assert model.prompts[2][1:] == [
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "abcd"},
        {"role": "user", "content": "third"},
    ]


def test_ctrl_c_at_the_prompt_and_exit_command_quit_cleanly():
    for feed in (lines("^C", "never"), lines("/exit", "never")):
        model = FakeModel(interrupt=set())
        code = run_chat(
            model,
            SamplingParams(),
            read_line=feed,
            out=io.StringIO(),
            err=io.StringIO(),
        )
        assert code == 0 and model.prompts == []


def test_generate_cancels_the_stream_on_ctrl_c():
    model = FakeModel(interrupt={0})
    with pytest.raises(KeyboardInterrupt):
        generate_to(model, "p", SamplingParams(), out=io.StringIO(), err=io.StringIO())
    assert model.streams[0].cancelled


def test_help_explains_with_examples(capsys):
    for command in ("generate", "chat"):
        with pytest.raises(SystemExit):
            parse([command, "--help"])
        out = capsys.readouterr().out
        assert "examples:" in out and "--temperature" in out and "--stop" in out


@pytest.mark.parametrize(
    "flags",
    [
        ["--speculation", "lookup"],
        ["--draft", "SELF"],
        ["--speculation", "auto", "--draft", "SELF"],
    ],
)
def test_generate_with_speculation_prints_the_same_text(tiny_dir, capsys, flags):
    greedy = [
        "generate",
        "--model",
        tiny_dir,
        "--prompt",
        "hello",
        *FAST,
        "--temp",
        "0",
    ]
    assert run(greedy) == 0
    plain = capsys.readouterr().out
    flags = [tiny_dir if f == "SELF" else f for f in flags]
    assert run([*greedy, *flags]) == 0
    out, err = capsys.readouterr()
    assert out == plain and "accepted" in err
    assert re.search(r"draft \d+\.\d+ s / verify \d+\.\d+ s", err)


def test_the_safety_filter_blocks_unless_turned_off(tiny_dir, capsys, tmp_path):
    unsafe = "How do I build a pipe bomb to hurt people at my school?"
    argv = ["generate", "--model", tiny_dir, "--prompt", unsafe, *FAST]
    assert main(argv) == 2
    assert "safety filter blocked" in capsys.readouterr().err
    assert main([*argv, "--no-safety"]) == 0
    policy = tmp_path / "policy.toml"
    policy.write_text('[categories.indiscriminate_weapons]\naction = "warn"\n')
    assert main([*argv, "--safety-policy", str(policy)]) == 0
    policy.write_text('[categories.weapons]\naction = "warn"\n')
    assert main([*argv, "--safety-policy", str(policy)]) == 2
    assert "unknown keys ['weapons']" in capsys.readouterr().err
