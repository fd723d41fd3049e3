"""SamplingParams refuses what makes no sense, with a message that names the field."""

from __future__ import annotations

import math

import pytest

from engine.schema import SamplingParams


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens must be an integer"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"n": 0}, "n must be between"),
        ({"n": True}, "n must be an integer"),
        ({"stop": ("",)}, "stop string"),
        ({"stop": ("x",) * 17}, "at most 16"),
        ({"stop": ("y" * 300,)}, "stop string"),
        ({"logit_bias": ((5, 1000.0),)}, "logit_bias value"),
        ({"logit_bias": ((-1, 1.0),)}, "logit_bias token id"),
        ({"top_logprobs": 50}, "top_logprobs"),
        ({"temperature": "hot"}, "temperature must be a number"),
    ],
)
def test_bad_values_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**fields)


def test_defaults_and_good_values():
    params = SamplingParams(
        max_tokens=10, temperature=0, stop=("\n",), seed=7, n=3, logit_bias=((1, -5.0),)
    )
    assert params.n == 3 and params.temperature == 0
    assert SamplingParams().temperature == 1.0
