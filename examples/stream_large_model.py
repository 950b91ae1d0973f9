"""Prune a model larger than host RAM (e.g. Llama-3-70B on one 80 GB GPU) by streaming it from its safetensors shards.

    python examples/stream_large_model.py --model meta-llama/Meta-Llama-3-70B --dataset calib.txt --output out/
    python examples/stream_large_model.py --tiny    # builds a tiny sharded checkpoint and streams it on CPU

Only the embeddings, the LM head and one decoder block are materialised at a time; every finished block is written
to the output shards, and an interrupted run continues where it stopped when started again with the same output.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

from optimum_si import SIConfig, SIPruner


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="meta-llama/Meta-Llama-3-70B")
    parser.add_argument("--dataset", help="calibration text file")
    parser.add_argument("--output", default=None)
    parser.add_argument("--tiny", action="store_true", help="stream a tiny random checkpoint on CPU")
    args = parser.parse_args(argv)

    output = args.output or tempfile.mkdtemp(prefix="optimum-si-stream-")
    if args.tiny:
        from transformers import AutoModelForCausalLM, LlamaConfig

        source = tempfile.mkdtemp(prefix="optimum-si-tiny-source-")
        AutoModelForCausalLM.from_config(LlamaConfig(
            vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2)).save_pretrained(source, max_shard_size="50KB")
        tokenizer, dataset = None, torch.randint(0, 128, (8, 32))
        config = SIConfig(method="wanda", num_samples=8, seqlen=32)
    else:
        from transformers import AutoTokenizer

        source, tokenizer, dataset = args.model, AutoTokenizer.from_pretrained(args.model), args.dataset
        config = SIConfig(method="wanda", induction=True, num_samples=128, seqlen=2048)
    pruner = SIPruner(config)
    pruner.prune(source, tokenizer=tokenizer, dataset=dataset, save_dir=output, max_shard_size="5GB")
    print(f"{pruner.report.summary()}; streamed to {output}")
    return output


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
