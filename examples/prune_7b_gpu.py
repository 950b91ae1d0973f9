"""Prune a 7B model in memory on one GPU (the whole model in GPU or CPU memory, one block worked on at a time).

    python examples/prune_7b_gpu.py --model meta-llama/Llama-2-7b-hf --dataset calib.txt --output llama2-7b-wanda-si
    python examples/prune_7b_gpu.py --tiny          # a tiny random Llama on CPU: checks the script, not quality

With 128 x 2048 calibration tokens a Llama-2-7B run keeps about 13 GB of bf16 weights plus ~2 GB of activations per
stream on the GPU; see docs/memory.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from optimum_si import SIConfig, SIPruner


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="meta-llama/Llama-2-7b-hf")
    parser.add_argument("--dataset", help="calibration text file")
    parser.add_argument("--output", default=None)
    parser.add_argument("--method", default="wanda", choices=["magnitude", "wanda", "sparsegpt"])
    parser.add_argument("--mask-structure", default="2:4")
    parser.add_argument("--tiny", action="store_true", help="run on a tiny random Llama on CPU")
    args = parser.parse_args(argv)

    if args.tiny:
        from transformers import LlamaConfig

        model = AutoModelForCausalLM.from_config(LlamaConfig(
            vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2))
        tokenizer, dataset = None, torch.randint(0, 128, (8, 32))
        config = SIConfig(method=args.method, mask_structure=args.mask_structure, induction=True, num_samples=8,
                          seqlen=32)
        device = "cpu"
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, device_map=device)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        dataset = args.dataset
        config = SIConfig(method=args.method, mask_structure=args.mask_structure, induction=True, num_samples=128,
                          seqlen=2048)
    pruner = SIPruner(config, device=device)  # a run option: where blocks are computed, never part of the recipe
    output = args.output or tempfile.mkdtemp(prefix="optimum-si-7b-")
    # With save_dir, a folder that already holds a checkpoint is refused before the (long) run, not after it.
    pruner.prune(model, tokenizer=tokenizer, dataset=dataset, save_dir=output)
    print(f"{pruner.report.summary()}; saved to {output}")
    return output


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
