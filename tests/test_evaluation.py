import math

import pytest
import torch
from torch import nn

from optimum_si.evaluation import perplexity

from .conftest import tiny_model, token_ids


def test_perplexity_matches_a_hand_computation():
    model = tiny_model("llama")
    ids = token_ids(1, 100).reshape(-1)
    seqlen = 16
    total = 0.0
    with torch.no_grad():
        for w in range(3):
            window = ids[w * seqlen:(w + 1) * seqlen].unsqueeze(0)
            logits = model(window).logits[0, :-1]
            total += nn.functional.cross_entropy(logits, window[0, 1:]).item() * seqlen
    expected = math.exp(total / (3 * seqlen))
    assert perplexity(model, ids, seqlen=seqlen, max_windows=3) == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, ids, seqlen=seqlen, max_windows=3, batch_size=2) == pytest.approx(expected, rel=1e-5)


def test_perplexity_errors():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(model, token_ids(1, 10).reshape(-1), seqlen=16)
    with pytest.raises(ValueError, match="evaluation text"):
        perplexity(model, lambda text, verbose=False: {"input_ids": [1, 2]}, None)


@pytest.mark.parametrize("kwargs, message", [
    ({"seqlen": 1}, "seqlen must be an integer >= 2"), ({"seqlen": 0}, "seqlen must be an integer >= 2"),
    ({"max_windows": 0}, "max_windows must be an integer >= 1"), ({"batch_size": 0}, "batch_size must be"),
    ({"device": "meta"}, "meta device"),
])
def test_perplexity_refuses_degenerate_settings(kwargs, message):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=message):
        perplexity(model, token_ids(1, 64).reshape(-1), **{"seqlen": 16, **kwargs})


def test_perplexity_of_a_broken_model_is_an_error_not_nan():
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        perplexity(model, token_ids(1, 64).reshape(-1), seqlen=16)


def test_perplexity_refuses_ids_the_model_cannot_read():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="integer tensor"):
        perplexity(model, torch.rand(64), seqlen=16)
    with pytest.raises(ValueError, match=r"must lie in \[0, 128\)"):
        perplexity(model, torch.full((64,), 500), seqlen=16)
