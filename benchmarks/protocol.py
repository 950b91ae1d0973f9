"""The SmolLM2-135M benchmark protocol, shared by every benchmark script and every study of `benchmarks.runner`.

Calibration: the first 4,000,000 characters of the cleaned Python 3.11 docs, tokenised once, 32 windows of 512
tokens at `random.Random(0).randint(0, T - 513)` starts. Evaluation: the cleaned Jargon File tokenised once, the
first 40 non-overlapping windows of 512 tokens. Token ids are cached next to the assets so every run (and every
implementation compared) sees identical windows. The assets themselves come from `tests/assets.py`.
"""

from __future__ import annotations

import os
import platform
import resource
import sys

import torch

from tests import assets

CALIB_SAMPLES, CALIB_SEQLEN, SEED = 32, 512, 0
EVAL_WINDOWS, EVAL_SEQLEN = 40, 512

# environment.md §5.2: (first reference run, second run / llm-compressor). SparseGPT differs by up to 3 % between
# two runs of the same reference code, so its acceptance band spans both runs.
REFERENCE_PPL = {
    ("dense", "-"): (39.5078, 39.5075),
    ("magnitude", "50%"): (555.1602,),
    ("magnitude", "2:4"): (1746.118,),
    ("wanda", "50%"): (95.1796, 95.2168),
    ("wanda", "2:4"): (333.8873, 337.0591),
    ("sparsegpt", "50%"): (88.8825, 89.8486),
    ("sparsegpt", "2:4"): (197.0439, 203.0328),
}
# environment.md §5.2, first table: prune seconds and peak RSS of the reference code on this kind of machine.
REFERENCE_PRUNE_S = {("magnitude", "50%"): 8.1, ("wanda", "50%"): 67.4, ("sparsegpt", "50%"): 118.2,
                     ("magnitude", "2:4"): 2.7, ("wanda", "2:4"): 66.8, ("sparsegpt", "2:4"): 104.5}


def setup_environment() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.manual_seed(SEED)


def load_model_and_tokenizer():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = assets.smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model, tokenizer


def _cached_ids(name: str, build) -> torch.Tensor:
    path = os.path.join(assets.default_cache_dir(), "tokens", f"{name}.pt")
    if os.path.isfile(path):
        return torch.load(path)
    ids = build()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(ids, path + ".tmp")
    os.replace(path + ".tmp", path)
    return ids


def calibration_ids(tokenizer, samples: int = CALIB_SAMPLES, seqlen: int = CALIB_SEQLEN, seed: int = SEED) -> torch.Tensor:
    from optimum_si.data.windows import draw_windows

    stream = _cached_ids("pydocs-4M", lambda: torch.as_tensor(
        tokenizer(assets.read_calibration_text(), verbose=False)["input_ids"], dtype=torch.long))
    return draw_windows(stream, samples, seqlen, seed)


def eval_ids(tokenizer) -> torch.Tensor:
    return _cached_ids("jargon", lambda: torch.as_tensor(
        tokenizer(assets.read_eval_text(), verbose=False)["input_ids"], dtype=torch.long))


# The cross-domain protocol (the studies of benchmarks.runner): each corpus has a calibration region and a disjoint
# evaluation region (character offsets into the cleaned text), so no evaluation window ever holds text a calibration
# window came from, in-domain cells included. The Jargon and Python-docs regions keep the single-domain protocol above
# (calibration on the first 4 M characters of the docs, evaluation on the start of the Jargon File); the Jargon
# calibration region starts at character 400,000 (environment.md's in-domain check), far past the 40 x 512
# evaluation tokens (~80,000 characters). Tokenising a region gives the same ids as the whole text there (checked for
# the first 40 x 512 Jargon tokens), so every study that scores the Jargon region scores `eval_ids`'s windows.
DOMAINS = ("pydocs", "jargon", "kjv")
CALIBRATION_REGION = {"pydocs": (0, 4_000_000), "jargon": (400_000, None), "kjv": (0, 3_000_000)}
EVALUATION_REGION = {"pydocs": (4_000_000, 4_400_000), "jargon": (0, 400_000), "kjv": (3_000_000, 3_400_000)}


def _region_ids(tokenizer, corpus: str, region: tuple[int, int | None], kind: str) -> torch.Tensor:
    start, end = region
    name = f"{corpus}-{kind}-{start}-{end or 'end'}"
    return _cached_ids(name, lambda: torch.as_tensor(
        tokenizer(assets.read_corpus(corpus)[start:end], verbose=False)["input_ids"], dtype=torch.long))


def domain_calibration_ids(tokenizer, corpus: str, samples: int = CALIB_SAMPLES, seqlen: int = CALIB_SEQLEN,
                           seed: int = SEED) -> torch.Tensor:
    """Calibration windows drawn from the calibration region of `corpus` (the single-domain protocol's for pydocs)."""
    from optimum_si.data.windows import draw_windows

    return draw_windows(_region_ids(tokenizer, corpus, CALIBRATION_REGION[corpus], "calib"), samples, seqlen, seed)


def domain_eval_ids(tokenizer, corpus: str) -> torch.Tensor:
    """The token stream of the evaluation region of `corpus` (the first windows of it are scored)."""
    return _region_ids(tokenizer, corpus, EVALUATION_REGION[corpus], "eval")


def study_protocol(calibration: str = "pydocs", evaluation: tuple[str, ...] = ("jargon",),
                   eval_windows: int = EVAL_WINDOWS, threads: int = 1) -> dict:
    """The `protocol` section of a study spec (benchmarks/studies/*/study.json) with this module's constants:
    calibration windows from the calibration region of `calibration`, the first `eval_windows` windows of the
    evaluation region of each corpus in `evaluation`, `threads` torch threads per row."""
    return {
        "model": "SmolLM2-135M-Instruct, fp32 (tests/assets.py)",
        "calibration": {"corpus": calibration, "region": "calibration", "samples": CALIB_SAMPLES,
                        "seqlen": CALIB_SEQLEN, "seed": SEED},
        "evaluation": {"corpora": list(evaluation), "region": "evaluation", "windows": eval_windows,
                       "seqlen": EVAL_SEQLEN},
        "threads": threads,
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def machine() -> dict:
    import transformers

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }


def within_reference(method: str, pattern: str, ppl: float, tolerance: float = 0.02) -> bool | None:
    refs = REFERENCE_PPL.get((method, pattern))
    if refs is None:
        return None
    return min(refs) * (1 - tolerance) <= ppl <= max(refs) * (1 + tolerance)
