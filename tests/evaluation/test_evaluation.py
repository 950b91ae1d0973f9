import math

import pytest
import torch
from torch import nn

from optimum_si.evaluation import perplexity
from tests.conftest import TINY_TASK, char_tokenizer, tiny_model, token_ids


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


def test_zero_shot_runs_lm_eval_on_the_in_memory_model(tmp_path):
    pytest.importorskip("lm_eval")
    import json

    from optimum_si.evaluation import zero_shot

    items = [{"question": "is the sky blue", "choices": [" yes", " no"], "answer": 0},
             {"question": "is fire cold", "choices": [" yes", " no"], "answer": 1},
             {"question": "pick a colour", "choices": [" red", " green", " blue"], "answer": 2}]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    (tmp_path / "si_tiny_choice.yaml").write_text(TINY_TASK.format(data=tmp_path / "items.jsonl"))
    model, tokenizer = tiny_model("llama"), char_tokenizer()

    scores = zero_shot(model, tokenizer, tasks=["si_tiny_choice"], include_path=str(tmp_path))

    assert set(scores) == {"si_tiny_choice"} and "acc" in scores["si_tiny_choice"]
    assert set(scores["si_tiny_choice"]) <= {"acc", "acc_stderr"}  # no bookkeeping entries (sample_len, alias)
    # The accuracy lm-eval computed is the share of items whose answer has the highest total log-likelihood.
    expected = []
    with torch.no_grad():
        for item in items:
            context = tokenizer(item["question"])["input_ids"]
            totals = []
            for choice in item["choices"]:
                ids = torch.tensor([context + tokenizer(choice)["input_ids"]])
                logprobs = model(ids).logits[0, :-1].log_softmax(-1)
                continuation = ids[0, len(context):]
                totals.append(logprobs[len(context) - 1:].gather(-1, continuation[:, None]).sum().item())
            expected.append(float(max(range(len(totals)), key=totals.__getitem__) == item["answer"]))
    assert scores["si_tiny_choice"]["acc"] == pytest.approx(sum(expected) / len(expected))
    assert not model.training


def test_zero_shot_task_names_and_presets():
    from optimum_si.evaluation.zero_shot import TASK_PRESETS, _task_names

    # (An unknown name is refused by zero_shot only after indexing lm-eval's ~15k task files: not tested here.)
    assert _task_names("wanda7") == ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
                                     "openbookqa"] == list(TASK_PRESETS["wanda7"])
    assert _task_names(["rte", "wanda7"])[:2] == ["rte", "boolq"]
    with pytest.raises(ValueError, match="No tasks given"):
        _task_names([])


@pytest.mark.parametrize("windows, show, bar", [(7, None, False), (8, None, True), (8, False, False), (2, True, True)])
def test_progress_bar_by_default_only_on_long_runs(capsys, windows, show, bar):
    model = tiny_model("llama")
    perplexity(model, token_ids(1, 16 * windows).reshape(-1), seqlen=16, show_progress=show)
    assert ("Perplexity" in capsys.readouterr().err) == bar
