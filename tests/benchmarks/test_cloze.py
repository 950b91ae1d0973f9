"""The real-model cloze benchmark's task building (benchmarks/cloze.py), on a small text and a tiny model."""

import json
import random

import pytest
import torch

from benchmarks import cloze
from optimum_si import SIPruner
from tests.conftest import char_tokenizer, tiny_model, token_ids

WORDS = ("hacker kludge system program machine network compiler terminal language manual editor channel "
         "source memory buffer kernel folklore wizard random daemon").split()


def _text(paragraphs: int = 30, seed: int = 1) -> str:
    rng = random.Random(seed)
    out = []
    for _ in range(paragraphs):
        words = [rng.choice(WORDS + ["the", "a", "of", "and"]) for _ in range(40)]
        out.append(" ".join(words[:20]) + ". " + " ".join(words[20:]) + ".")
    # Paragraphs wrapped over lines, as in the cleaned Jargon File; short ones are skipped.
    return "\n\n".join(p[:60] + "\n" + p[60:] for p in out) + "\n\ntoo short to use.\n"


def test_items_are_well_formed_and_deterministic():
    text = _text()
    items = cloze.build_items(text, count=12, seed=0)
    assert len(items) == 12 and items == cloze.build_items(text, count=12, seed=0)
    assert items != cloze.build_items(text, count=12, seed=1)
    flat = " ".join(text.split())
    for item in items:
        choices, answer = item["choices"], item["answer"]
        assert len(choices) == cloze.CHOICES and len(set(choices)) == cloze.CHOICES and 0 <= answer < cloze.CHOICES
        # The context and the right answer put back together are the original text; the other choices differ
        # only in the gap word, which is another word of the same text.
        assert f"{item['context']} {choices[answer]}" in flat
        tails = {choice.split(" ", 1)[1] for choice in choices}
        assert len(tails) == 1 and len(tails.pop().split()) <= cloze.RIGHT_WORDS
        assert choices[answer].split(" ", 1)[0] == item["word"]
        for choice in choices:
            gap = choice.split(" ", 1)[0]
            assert gap.lower() in WORDS and abs(len(gap) - len(item["word"])) <= cloze.LENGTH_SLACK
        assert cloze.MIN_CONTEXT_WORDS <= len(item["context"].split()) <= cloze.CONTEXT_WORDS
    assert len({item["answer"] for item in items}) > 1  # the answer is not always in the same place
    assert len(cloze.build_items(text, count=1000, seed=0)) == 30  # one per usable paragraph


def test_the_task_runs_in_lm_eval_and_scores_what_the_pruned_model_prefers(tmp_path):
    pytest.importorskip("lm_eval")
    from optimum_si.evaluation import zero_shot

    items = cloze.build_items(_text(8), count=8, seed=0)
    folder = cloze.write_task(items, tmp_path / "task")
    assert (folder / f"{cloze.TASK_NAME}.yaml").is_file()
    assert [json.loads(line) for line in (folder / f"{cloze.TASK_NAME}.jsonl").read_text().splitlines()] == items
    model, tokenizer = tiny_model("llama"), char_tokenizer()
    SIPruner(method="wanda", sparsity=0.5, num_samples=4, seqlen=32, show_progress=False).prune(
        model, dataset=token_ids(4, 32))  # a pruned model's accuracy, computed by lm-eval

    scores = zero_shot(model, tokenizer, tasks=[cloze.TASK_NAME], include_path=str(folder))[cloze.TASK_NAME]

    assert {"acc", "acc_norm"} <= set(scores)
    expected = []
    with torch.no_grad():
        for item in items:
            context = tokenizer(item["context"])["input_ids"]
            totals = []
            for choice in item["choices"]:
                ids = torch.tensor([context + tokenizer(" " + choice)["input_ids"]])
                logprobs = model(ids).logits[0, :-1].log_softmax(-1)
                totals.append(logprobs[len(context) - 1:].gather(-1, ids[0, len(context):, None]).sum().item())
            expected.append(float(max(range(len(totals)), key=totals.__getitem__) == item["answer"]))
    assert scores["acc"] == pytest.approx(sum(expected) / len(expected))
