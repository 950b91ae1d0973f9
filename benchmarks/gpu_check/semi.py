"""Section `semi_structured`: `optimum_si.semi_structured.to_semi_structured` on a saved 2:4 checkpoint, and 2:4
sparse against dense matrix products at Llama-3-8B and 70B Linear shapes on the same GPU.

1. The user's path: prune 2:4 (magnitude: data-free), save, reload in bf16 on the GPU, convert; the converted model's
   logits and perplexity against the same weights run dense. SmolLM2 when it is here, else a random Llama.
2. One Linear per shape (random bf16 weights cut to 2:4 by magnitude), converted by the same function: the median
   time of `linear(x)` sparse and dense over token counts from decode-sized to prefill-sized, with CUDA events.

In cpu mode the conversion must refuse with its clear error (no kernels on CPU), and only dense products are timed.
"""

from __future__ import annotations

import shutil
import statistics
from pathlib import Path
from typing import Any

from benchmarks.gpu_check.child import ChildContext, SectionSkipped

# (name, out, in) of the Linears timed; the 70B ones last.
GPU_SHAPES = [("8B q/o_proj", 4096, 4096), ("8B k/v_proj", 1024, 4096), ("8B gate/up_proj", 14336, 4096),
              ("8B down_proj", 4096, 14336), ("70B gate/up_proj", 28672, 8192), ("70B down_proj", 8192, 28672)]
GPU_TOKENS = [16, 128, 2048, 8192]
CPU_SHAPES = [("tiny gate/up_proj", 128, 64), ("tiny down_proj", 64, 128)]
CPU_TOKENS = [16, 64]
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)
# A model for the conversion when SmolLM2 is not here: every Linear's dimensions multiples of 64.
RANDOM = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16,
              num_key_value_heads=4, max_position_embeddings=2048)


def _median_ms(device: str, work, repeats: int, warmup: int = 3) -> float:
    import time

    import torch

    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            work()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            started = time.perf_counter()
            work()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _source_model(ctx: ChildContext):
    """(model in fp32 on the CPU, evaluation ids, what it is): SmolLM2 when it is here, else a random Llama."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    if not ctx.cpu:
        from benchmarks.gpu_check import assets

        try:
            folder, _ = assets.smollm2_folder(ctx, log=ctx.note)
            _, evaluation, _ = assets.smollm2_tokens(ctx, folder)
            return (AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), evaluation[: 8 * 512], 512,
                    "SmolLM2-135M-Instruct")
        except SectionSkipped as skip:
            ctx.note(f"conversion on a random Llama instead of SmolLM2 ({skip.reason})")
    config = TINY if ctx.cpu else RANDOM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**config), dtype=torch.float32)
    seqlen = 32 if ctx.cpu else 512
    ids = torch.randint(0, config["vocab_size"], (4 * seqlen,), generator=torch.Generator().manual_seed(1))
    return model, ids, seqlen, f"a random Llama (hidden {config['hidden_size']}, {config['num_hidden_layers']} blocks)"


def _conversion(ctx: ChildContext) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from optimum_si import SIPruner
    from optimum_si.evaluation import perplexity
    from optimum_si.semi_structured import to_semi_structured

    model, ids, seqlen, what = _source_model(ctx)
    pruner = SIPruner(method="magnitude", mask_structure="2:4", show_progress=False)
    pruner.prune(model)
    folder = Path(ctx.work) / "semi-structured-2of4"
    shutil.rmtree(folder, ignore_errors=True)  # a rerun in the same work folder
    pruner.save(model, folder, plots=False)
    dtype = torch.float32 if ctx.cpu else torch.bfloat16
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(ctx.device).eval()
    batch = ids[: (ids.numel() // seqlen) * seqlen].reshape(-1, seqlen).to(ctx.device)
    record: dict[str, Any] = {"kind": "conversion", "model": what, "checkpoint": str(folder), "dtype": str(dtype)}
    with torch.no_grad():
        dense_logits = reloaded(batch).logits.float()
        record["dense_ppl"] = perplexity(reloaded, ids, seqlen=seqlen, show_progress=False)
        record["dense_forward_ms"] = _median_ms(ctx.device, lambda: reloaded(batch), repeats=5)
        try:
            names = to_semi_structured(reloaded)
        except RuntimeError as err:
            record.update(converted=0, refused=str(err))
            return record
        weight = reloaded.get_submodule(names[0]).weight
        sparse_logits = reloaded(batch).logits.float()
        record.update(
            converted=len(names), weight_class=type(weight).__name__,
            logits_max_abs_diff=float((sparse_logits - dense_logits).abs().max()),
            logits_max_abs=float(dense_logits.abs().max()),
            sparse_ppl=perplexity(reloaded, ids, seqlen=seqlen, show_progress=False),
            sparse_forward_ms=_median_ms(ctx.device, lambda: reloaded(batch), repeats=5),
            forward_tokens=int(batch.numel()))
    return record


def _matmul(ctx: ChildContext, name: str, rows: int, cols: int, tokens: list[int]) -> list[dict[str, Any]]:
    import torch
    from torch import nn

    from optimum_si.methods.masks import nm_mask
    from optimum_si.semi_structured import to_semi_structured

    dtype = torch.float32 if ctx.cpu else torch.bfloat16
    generator = torch.Generator(ctx.device).manual_seed(0)
    weight = torch.randn(rows, cols, device=ctx.device, dtype=dtype, generator=generator)
    weight = weight * nm_mask(weight.abs().float(), 2, 4)
    dense = nn.Linear(cols, rows, bias=False, device=ctx.device, dtype=dtype)
    sparse = nn.Sequential(nn.Linear(cols, rows, bias=False, device=ctx.device, dtype=dtype))
    with torch.no_grad():
        dense.weight.copy_(weight)
        sparse[0].weight.copy_(weight)
    backend: str | None = None
    refused: str | None = None
    try:
        to_semi_structured(sparse)
        backend = type(sparse[0].weight).__name__
    except RuntimeError as err:  # no kernels here (cpu mode): dense timings only
        refused = str(err)
    records = []
    with torch.no_grad():
        for count in tokens:
            x = torch.randn(count, cols, device=ctx.device, dtype=dtype, generator=generator)
            repeats = 20 if count * rows * cols < 2**34 else 10
            record: dict[str, Any] = {"kind": "matmul", "linear": name, "out": rows, "in": cols, "tokens": count,
                                      "dtype": str(dtype), "dense_ms": _median_ms(ctx.device, lambda: dense(x),
                                                                                  repeats)}
            if refused is None:
                record["sparse_ms"] = _median_ms(ctx.device, lambda: sparse(x), repeats)
                record["speedup"] = record["dense_ms"] / record["sparse_ms"]
                reference = dense(x).float()
                record["max_rel_error"] = float((sparse(x).float() - reference).abs().max() /
                                                reference.abs().max().clamp_min(1e-6))
                record["backend"] = backend
            else:
                record.update(sparse_ms=None, speedup=None, refused=refused)
            records.append(record)
    return records


def run(ctx: ChildContext) -> None:
    import torch

    if not ctx.cpu:
        if not torch.cuda.is_available():
            raise SectionSkipped("no CUDA device", ["a CUDA device of compute capability 8.0 or newer"])
        if torch.cuda.get_device_capability() < (8, 0):
            raise SectionSkipped("semi-structured kernels need compute capability 8.0 or newer",
                                 ["an Ampere or newer GPU"])
    try:
        record = _conversion(ctx)
    except Exception as err:  # noqa: BLE001 - the timings below do not depend on it
        record = {"kind": "conversion", "error": f"{type(err).__name__}: {err}"}
    if record.get("error"):
        line = f"conversion FAILED: {record['error']}"
    elif record.get("refused"):
        line = f"conversion refused, as it must be here: {record['refused'][:90]}"
    else:
        line = (f"converted {record['converted']} Linears of {record['model']} ({record['weight_class']}); max |logit "
                f"diff| {record['logits_max_abs_diff']:.3g}; PPL {record['dense_ppl']:.2f} dense, "
                f"{record['sparse_ppl']:.2f} sparse; forward {record['dense_forward_ms']:.1f} -> "
                f"{record['sparse_forward_ms']:.1f} ms")
    ctx.emit(record, line)
    for name, rows, cols in CPU_SHAPES if ctx.cpu else GPU_SHAPES:
        try:
            for record in _matmul(ctx, name, rows, cols, CPU_TOKENS if ctx.cpu else GPU_TOKENS):
                speed = f"x{record['speedup']:.2f}" if record.get("speedup") else "dense only"
                ctx.emit(record, f"{name} [{rows}x{cols}] x {record['tokens']} tokens: dense "
                                 f"{record['dense_ms']:.3f} ms, {speed}")
        except Exception as err:  # noqa: BLE001 - one shape's failure is that shape's result
            ctx.emit({"kind": "matmul", "linear": name, "out": rows, "in": cols, "error": f"{type(err).__name__}: "
                      f"{err}"}, f"{name}: FAILED {err}")
