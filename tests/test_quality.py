from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_map
from mlx_lm.models import llama

from convert.quality import EVAL_TEXT_PATH, QualityReport, eval_tokens, evaluate

VOCAB = 256


def make_args(vocab_size: int = VOCAB) -> llama.ModelArgs:
    return llama.ModelArgs(
        model_type="llama",
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=vocab_size,
        tie_word_embeddings=False,
    )


def make_model(seed: int, vocab_size: int = VOCAB) -> llama.Model:
    mx.random.seed(seed)
    model = llama.Model(make_args(vocab_size))
    mx.eval(model.parameters())
    return model


def noisy_copy(model: llama.Model, scale: float, seed: int = 1) -> llama.Model:
    """A new model with ``model``'s weights plus Gaussian noise of std ``scale``."""
    copy = make_model(seed)
    mx.random.seed(seed)
    copy.update(
        tree_map(lambda w: w + scale * mx.random.normal(w.shape), model.parameters())
    )
    mx.eval(copy.parameters())
    return copy


def random_tokens(n: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(0, VOCAB, size=n).tolist()


def numpy_log_probs(model: llama.Model, tokens: list[int]) -> np.ndarray:
    """float64 log-softmax of the logits predicting tokens[1:] from one forward pass."""
    logits = model(mx.array(tokens[:-1])[None])[0].astype(mx.float32)
    z = np.array(logits, dtype=np.float64)  # (n - 1, vocab)
    top = z.max(axis=-1, keepdims=True)
    return z - top - np.log(np.exp(z - top).sum(axis=-1, keepdims=True))


def numpy_nll(model: llama.Model, tokens: list[int]) -> np.ndarray:
    logp = numpy_log_probs(model, tokens)
    return -logp[np.arange(len(tokens) - 1), tokens[1:]]


class ByteTokenizer:
    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


@pytest.fixture(scope="module")
def model() -> llama.Model:
    return make_model(0)


def test_same_model_has_zero_kl_and_equal_perplexity(model):
    report = evaluate(model, model, random_tokens(48), window=16, progress=False)
    assert report.tokens == 45
    assert report.kl_mean == pytest.approx(0.0, abs=1e-6)
    assert abs(report.kl_max) < 1e-5
    assert report.source_perplexity == report.converted_perplexity
    assert report.perplexity_increase == 0.0
    assert report.top1_agreement == 1.0


def test_more_noise_gives_more_kl(model):
    tokens = random_tokens(64)
    small = evaluate(model, noisy_copy(model, 0.01), tokens, progress=False)
    large = evaluate(model, noisy_copy(model, 0.1), tokens, progress=False)
    assert 0 < small.kl_mean < large.kl_mean
    assert 0 < small.kl_p99 <= small.kl_max
    assert large.converted_perplexity != large.source_perplexity
    assert large.source_perplexity == small.source_perplexity
    assert large.top1_agreement < 1.0


def test_quantized_copy_differs(model):
    quantized = noisy_copy(model, 0.0)
    nn.quantize(quantized, group_size=32, bits=2)
    report = evaluate(model, quantized, random_tokens(64), progress=False)
    assert report.kl_mean > 0
    assert report.converted_perplexity != report.source_perplexity


def test_perplexity_and_kl_match_numpy(model):
    tokens = random_tokens(24)
    other = noisy_copy(model, 0.1)
    report = evaluate(model, other, tokens, window=64, progress=False)
    logp_s, logp_c = numpy_log_probs(model, tokens), numpy_log_probs(other, tokens)
    kl = (np.exp(logp_s) * (logp_s - logp_c)).sum(axis=-1)
    assert report.tokens == 23
    assert report.source_perplexity == pytest.approx(
        math.exp(numpy_nll(model, tokens).mean()), rel=1e-5
    )
    assert report.converted_perplexity == pytest.approx(
        math.exp(numpy_nll(other, tokens).mean()), rel=1e-5
    )
    assert report.kl_mean == pytest.approx(kl.mean(), rel=1e-3, abs=1e-7)
    assert report.kl_max == pytest.approx(kl.max(), rel=1e-3, abs=1e-7)
    agree = logp_s.argmax(axis=-1) == logp_c.argmax(axis=-1)
    assert report.top1_agreement == pytest.approx(agree.mean())


def test_windows_restart_context_and_skip_first_token(model):
    tokens = random_tokens(40)
    report = evaluate(model, model, tokens, window=16, progress=False)
    # Windows [0:16], [16:32], [32:40]: the first token of each is context only.
    nll = np.concatenate([numpy_nll(model, tokens[s : s + 16]) for s in (0, 16, 32)])
    assert report.tokens == 15 + 15 + 7
    assert report.source_perplexity == pytest.approx(math.exp(nll.mean()), rel=1e-5)
    whole = evaluate(model, model, tokens, window=40, progress=False)
    assert whole.tokens == 39
    assert whole.source_perplexity != pytest.approx(report.source_perplexity, rel=1e-6)


def test_trailing_single_token_window_predicts_nothing(model):
    report = evaluate(model, model, random_tokens(33), window=16, progress=False)
    assert report.tokens == 30


def test_max_tokens_uses_a_prefix(model):
    tokens = random_tokens(50)
    other = noisy_copy(model, 0.05)
    cut = evaluate(model, other, tokens, window=16, max_tokens=20, progress=False)
    prefix = evaluate(model, other, tokens[:20], window=16, progress=False)
    assert cut == prefix
    assert cut.tokens == 18


@pytest.mark.parametrize(
    ("tokens", "window"), [([5], 16), ([], 16), (list(range(10)), 1)]
)
def test_rejects_too_few_tokens_or_tiny_window(model, tokens, window):
    with pytest.raises(ValueError):
        evaluate(model, model, tokens, window=window, progress=False)


def test_rejects_vocab_mismatch(model):
    with pytest.raises(ValueError, match="same vocabulary"):
        evaluate(model, make_model(2, vocab_size=128), random_tokens(8), progress=False)


def test_eval_text_is_varied_utf8_of_intended_size():
    text = EVAL_TEXT_PATH.read_bytes().decode("utf-8")  # strict: raises on bad bytes
    assert 14_000 <= len(text) <= 18_000
    visible = [c for c in text if not c.isspace()]
    cjk = sum("\u4e00" <= c <= "\u9fff" for c in visible)
    latin = sum(c.isascii() and c.isalpha() for c in visible)
    assert cjk / len(visible) > 0.25
    assert latin / len(visible) > 0.4
    assert "def " in text and "function " in text and "SELECT" in text


def test_eval_tokens_uses_shipped_text_or_override():
    tokenizer = ByteTokenizer()
    assert eval_tokens(tokenizer) == list(EVAL_TEXT_PATH.read_bytes())
    assert eval_tokens(tokenizer, text="hi 你好") == list("hi 你好".encode())


def test_shipped_text_end_to_end(model):
    tokens = eval_tokens(ByteTokenizer())
    report = evaluate(model, model, tokens, window=256, max_tokens=600, progress=False)
    assert report.tokens == 600 - 3
    assert math.isfinite(report.source_perplexity)


def test_progress_bar_counts_windows(model, capsys):
    evaluate(model, model, random_tokens(40), window=16, progress=True)
    assert "3/3" in capsys.readouterr().err


def test_render_shows_the_numbers():
    report = QualityReport(
        tokens=4095,
        source_perplexity=12.5,
        converted_perplexity=12.8875,
        kl_mean=0.01234,
        kl_p99=0.0812,
        kl_max=0.3101,
        top1_agreement=0.9781,
    )
    assert report.perplexity_increase == pytest.approx(0.031)
    text = report.render()
    for part in ("4095", "12.500", "12.887", "+3.10%", "0.0123", "0.0812", "0.3101"):
        assert part in text
    assert "97.81%" in text
    assert len(text.splitlines()) <= 6
