"""A zero-shot check on real text: a multiple-choice cloze task over held-out Jargon File text, run through
lm-evaluation-harness (`optimum_si.evaluation.zero_shot`) for the dense model, Wanda and SI + Wanda.

    python -m benchmarks.cloze                      # dense, wanda 50 %, SI + wanda 50 % (not timed yet)
    python -m benchmarks.cloze --items 50           # a quicker, noisier run
    python -m benchmarks.cloze --build-only         # write the task files and print where

The task: paragraphs of the Jargon File's evaluation region (benchmarks/protocol.py `EVALUATION_REGION`, text no
calibration window of the protocol comes from) each give one item: a word is masked, the model sees up to
`CONTEXT_WORDS` words before it, and each of 4 candidates (the true word and 3 distractors drawn from the same
region's words of similar length, seeded) is scored as candidate + the rest of the sentence (up to `RIGHT_WORDS`
words), so the words after the gap count too. lm-eval's `acc` takes the candidate with the highest total
log-likelihood, `acc_norm` the highest per byte; chance is 0.25.

Every model is pruned with the protocol's calibration set (32 x 512 tokens of the Python docs, seed 0). The items
and the task YAML (`dataset_path: json`) go to `<cache>/cloze/`; the scores to benchmarks/results/cloze.json and
cloze.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import time
from collections import Counter
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TASK_NAME = "si_jargon_cloze"
CHOICES = 4
CONTEXT_WORDS = 48  # words before the gap the model sees (a sentence or two)
MIN_CONTEXT_WORDS = 12
RIGHT_WORDS = 8  # words after the gap scored with each candidate (within the sentence)
MIN_WORD_CHARS = 5  # gap and distractor words: alphabetic, at least this long (no function words)
MIN_WORD_COUNT = 2  # distractors are words seen at least this often in the region (no typos or one-off names)
LENGTH_SLACK = 2  # distractor length within this many characters of the answer's

_WORD = re.compile(r"[A-Za-z]+")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")

TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: choices
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def paragraphs(text: str) -> list[str]:
    """Paragraphs (blank-line separated) with their line breaks and runs of spaces folded to single spaces."""
    return [" ".join(block.split()) for block in re.split(r"\n\s*\n", text) if block.strip()]


def _vocabulary(text: str) -> dict[int, list[str]]:
    """Candidate distractors by length: lower-case alphabetic words of the text, frequent enough, sorted."""
    counts = Counter(word.lower() for word in _WORD.findall(text))
    by_length: dict[int, list[str]] = {}
    for word, count in sorted(counts.items()):
        if count >= MIN_WORD_COUNT and len(word) >= MIN_WORD_CHARS:
            by_length.setdefault(len(word), []).append(word)
    return by_length


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word.capitalize() if like[0].isupper() else word


def _item(paragraph: str, vocabulary: dict[int, list[str]], rng: random.Random) -> dict | None:
    """One cloze item from `paragraph`, or None when it has no usable gap."""
    words = list(re.finditer(r"\S+", paragraph))
    gaps = []
    for position, match in enumerate(words):
        token = match.group()
        if position < MIN_CONTEXT_WORDS or not token.isalpha() or len(token) < MIN_WORD_CHARS:
            continue  # a whole alphabetic word (no attached punctuation), with enough context before it
        rest = paragraph[match.end():]
        end = _SENTENCE_END.search(rest)
        right = rest[:end.end()] if end else rest
        if len(right.split()) < 2:
            continue  # something after the gap to score
        gaps.append((position, match, right))
    rng.shuffle(gaps)
    for position, match, right in gaps:
        answer = match.group()
        pool = [w for n in range(len(answer) - LENGTH_SLACK, len(answer) + LENGTH_SLACK + 1)
                for w in vocabulary.get(n, []) if w != answer.lower()]
        if len(pool) < CHOICES - 1:
            continue
        distractors = [_match_case(w, answer) for w in rng.sample(pool, CHOICES - 1)]
        start = words[max(0, position - CONTEXT_WORDS)].start()
        context = paragraph[start:match.start()].rstrip()
        tail = " ".join(right.split()[:RIGHT_WORDS])
        index = rng.randrange(CHOICES)
        candidates = distractors[:index] + [answer] + distractors[index:]
        # lm-eval joins context + " " + choice; each choice is the candidate word and the same words after it (a
        # whole-word gap is followed by a space, so the tail always starts a new word).
        choices = [f"{candidate} {tail}" for candidate in candidates]
        return {"context": context, "choices": choices, "answer": index, "word": answer}
    return None


def build_items(text: str, count: int = 200, seed: int = 0) -> list[dict]:
    """Up to `count` cloze items, at most one per paragraph, from paragraphs spread evenly over `text`."""
    rng = random.Random(seed)
    vocabulary = _vocabulary(text)
    usable = [p for p in paragraphs(text) if len(p.split()) >= MIN_CONTEXT_WORDS + 3]
    items = []
    for paragraph in usable:
        item = _item(paragraph, vocabulary, rng)
        if item is not None:
            items.append(item)
    if len(items) > count:  # evenly spread over the region, not its first `count` paragraphs
        items = [items[int(i * len(items) / count)] for i in range(count)]
    return items


def write_task(items: list[dict], folder: str | os.PathLike, task: str = TASK_NAME) -> Path:
    """The items as JSON lines and an lm-eval task YAML next to them (pass the folder as `include_path`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{task}.jsonl"
    data.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items), encoding="utf-8")
    (folder / f"{task}.yaml").write_text(TASK_YAML.format(task=task, data=data), encoding="utf-8")
    return folder


def jargon_items(count: int, seed: int) -> list[dict]:
    from benchmarks import protocol
    from tests import assets

    start, end = protocol.EVALUATION_REGION["jargon"]
    return build_items(assets.read_corpus("jargon")[start:end], count, seed)


def run(items: list[dict], folder: Path, pattern: str, calibration: str) -> list[dict]:
    from benchmarks import protocol
    from benchmarks.studies.patterns import pattern_fields
    from optimum_si import SIConfig, SIPruner
    from optimum_si.evaluation import zero_shot

    protocol.setup_environment()
    records = []
    for name, method, induction in (("dense", None, False), ("wanda", "wanda", False), ("wanda + SI", "wanda", True)):
        model, tokenizer = protocol.load_model_and_tokenizer()
        record = {"model": name, "pattern": "-" if method is None else pattern, "calibration": calibration}
        if method is not None:
            config = SIConfig(method=method, **pattern_fields(pattern), induction=induction,
                              num_samples=protocol.CALIB_SAMPLES, seqlen=protocol.CALIB_SEQLEN, seed=protocol.SEED)
            pruner = SIPruner(config, show_progress=False)
            pruner.prune(model, tokenizer=tokenizer, dataset=protocol.domain_calibration_ids(tokenizer, calibration))
            record.update(sparsity=pruner.report.sparsity, prune_s=pruner.report.total_seconds)
            if induction:  # the resolved SI options, so the record stays readable after the defaults change
                record["si_options"] = config.induction.to_dict()
        t0 = time.perf_counter()
        scores = zero_shot(model, tokenizer, tasks=[TASK_NAME], include_path=str(folder))[TASK_NAME]
        record.update(scores, eval_s=time.perf_counter() - t0)
        records.append(record)
        print(f"{name}: acc {scores.get('acc', float('nan')):.4f}, acc_norm {scores.get('acc_norm', float('nan')):.4f}",
              flush=True)
        del model
    return records


def markdown(records: list[dict], meta: dict) -> str:
    lines = ["| model | pattern | acc | acc_norm | prune s | eval s |", "|---|---|---:|---:|---:|---:|"]
    for r in records:
        def score(key: str) -> str:
            if key not in r:
                return "–"
            stderr = r.get(f"{key}_stderr")
            return f"{r[key]:.3f}" + (f" ± {stderr:.3f}" if isinstance(stderr, float) else "")

        lines.append(f"| {r['model']} | {r['pattern']} | {score('acc')} | {score('acc_norm')} | "
                     f"{r.get('prune_s', 0.0):.1f} | {r['eval_s']:.1f} |")
    lines += ["", f"SmolLM2-135M-Instruct (fp32), {meta['items']} cloze items ({CHOICES} choices, chance 0.25) from the "
              f"Jargon File evaluation region, seed {meta['seed']}; pruned with {meta['samples']} x {meta['seqlen']} "
              f"calibration tokens of {meta['calibration']} (seed 0); lm-evaluation-harness {meta['lm_eval']}, torch "
              f"{meta['torch']}, {meta['threads']} threads. ± is lm-eval's standard error. Made by "
              "`python -m benchmarks.cloze`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200, help="cloze items (one per paragraph)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the gaps, distractors and answer positions")
    parser.add_argument("--pattern", default="50%", choices=["50%", "2:4", "4:8"])
    parser.add_argument("--calibration", default="pydocs", choices=["pydocs", "jargon", "kjv"],
                        help="calibration corpus (its calibration region; jargon's never overlaps the items)")
    parser.add_argument("--task-dir", default=None, help="where the task files go (default: <cache>/cloze)")
    parser.add_argument("--name", default="cloze", help="results file stem in benchmarks/results/")
    parser.add_argument("--build-only", action="store_true", help="write the task files, run nothing")
    args = parser.parse_args(argv)

    from benchmarks import protocol
    from tests import assets

    items = jargon_items(args.items, args.seed)
    folder = write_task(items, args.task_dir or Path(assets.default_cache_dir()) / "cloze")
    data = (folder / f"{TASK_NAME}.jsonl").read_bytes()
    print(f"{len(items)} items in {folder} (sha256 {hashlib.sha256(data).hexdigest()[:12]})")
    if args.build_only:
        return 0
    import lm_eval

    records = run(items, folder, args.pattern, args.calibration)
    meta = {"items": len(items), "seed": args.seed, "items_sha256": hashlib.sha256(data).hexdigest(),
            "samples": protocol.CALIB_SAMPLES, "seqlen": protocol.CALIB_SEQLEN, "calibration": args.calibration,
            "lm_eval": getattr(lm_eval, "__version__", "?"), **protocol.machine()}
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{args.name}.json").write_text(json.dumps({"meta": meta, "records": records}, indent=2) + "\n")
    (RESULTS_DIR / f"{args.name}.md").write_text(markdown(records, meta))
    print(markdown(records, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
