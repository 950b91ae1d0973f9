"""Section `smollm2`: SmolLM2-135M pruned on the GPU with Wanda, SparseGPT, SI + Wanda and SI + SparseGPT at 50 %
and 2:4, timed against the reference loop (`benchmarks/reference_loop.py`) on the same GPU, each pruned model's
perplexity compared with the CPU tables (`cpu_tables.py`).

The protocol is the quality study's (32 x 512 calibration tokens of the Python docs, the first 40 x 512 tokens of
the Jargon File, fp32 weights), so every perplexity has a CPU counterpart. The model is loaded once and its dense
weights restored before each row; rows run most valuable first (the 50 % rows and their reference runs, then SI,
then 2:4), and a row that would start with under `MIN_ROW_S` left is recorded as not run.
"""

from __future__ import annotations

import copy
from typing import Any

from benchmarks.gpu_check import assets
from benchmarks.gpu_check.child import ChildContext, SectionSkipped
from benchmarks.gpu_check.cpu_tables import cpu_comparison
from benchmarks.gpu_check.measure import timed

MIN_ROW_S = 8.0
# (method, pattern, SI, implementation), in the order they run.
GPU_ROWS = [
    ("wanda", "50%", False, "optimum-si"), ("wanda", "50%", False, "reference"),
    ("sparsegpt", "50%", False, "optimum-si"), ("sparsegpt", "50%", False, "reference"),
    ("wanda", "50%", True, "optimum-si"), ("sparsegpt", "50%", True, "optimum-si"),
    ("wanda", "2:4", False, "optimum-si"), ("sparsegpt", "2:4", False, "optimum-si"),
    ("wanda", "2:4", True, "optimum-si"), ("sparsegpt", "2:4", True, "optimum-si"),
]
# The cpu mode runs every code path once on a tiny model: both implementations, SI, an N:M pattern.
CPU_ROWS = [GPU_ROWS[i] for i in (0, 1, 2, 3, 4, 6)]
TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)


def row_key(method: str, pattern: str, induction: bool) -> str:
    """The quality study's key of the row ("wanda-50%", "sparsegpt-2:4-si")."""
    return f"{method}-{pattern}{'-si' if induction else ''}"


def _tiny_model_and_tokens():
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**TINY), dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(0)
    calibration = torch.randint(0, TINY["vocab_size"], (8, 32), generator=generator)
    evaluation = torch.randint(0, TINY["vocab_size"], (4 * 32,), generator=generator)
    return model, calibration, evaluation, {"model": "a tiny random Llama (cpu mode)", "samples": 8, "seqlen": 32,
                                            "eval_windows": 4}


def _smollm2_and_tokens(ctx: ChildContext):
    import torch
    from transformers import AutoModelForCausalLM

    from benchmarks import protocol

    folder, provenance = assets.smollm2_folder(ctx, log=ctx.note)
    calibration, evaluation, token_source = assets.smollm2_tokens(ctx, folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, calibration, evaluation, {
        "model": "SmolLM2-135M-Instruct fp32", **provenance, "tokens": token_source,
        "samples": protocol.CALIB_SAMPLES, "seqlen": protocol.CALIB_SEQLEN, "eval_windows": protocol.EVAL_WINDOWS}


def _recipe(method: str, pattern: str, induction: bool, setup: dict[str, Any]):
    from benchmarks import protocol
    from benchmarks.studies.patterns import pattern_fields
    from optimum_si import SIConfig

    return SIConfig(method=method, **pattern_fields(pattern), induction=induction, num_samples=setup["samples"],
                    seqlen=setup["seqlen"], seed=protocol.SEED)


def _prune_row(model, calibration, method: str, pattern: str, induction: bool, impl: str, setup: dict[str, Any],
               device: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if impl == "reference":
        from benchmarks.reference_loop import reference_prune

        ids = calibration.to(device)
        _, seconds, memory = timed(device, lambda: reference_prune(model, ids, method))
    else:
        from optimum_si import SIPruner

        pruner = SIPruner(_recipe(method, pattern, induction, setup), show_progress=False)
        _, seconds, memory = timed(device, lambda: pruner.prune(model, dataset=calibration))
        report = pruner.report
        fields.update(sparsity=report.sparsity, library_total_s=report.total_seconds,
                      capture_s=report.capture_seconds)
        si = report.induction_summary()
        if si is not None:
            fields["induction"] = {k: si[k] for k in ("blocks", "blocks_kept") if k in si}
    return {"prune_s": seconds, **memory, **fields}


def run(ctx: ChildContext) -> None:
    import torch

    from optimum_si.evaluation import perplexity

    device = ctx.device
    if not ctx.cpu and not torch.cuda.is_available():
        raise SectionSkipped("no CUDA device", ["a CUDA device"])
    dense_model, calibration, evaluation, setup = _tiny_model_and_tokens() if ctx.cpu else _smollm2_and_tokens(ctx)
    dense_model.to(device)
    windows, seqlen = setup["eval_windows"], 32 if ctx.cpu else 512

    def evaluate(pruned) -> tuple[float, float]:
        ppl, seconds, _ = timed(device, lambda: perplexity(pruned, evaluation, seqlen=seqlen, max_windows=windows,
                                                           show_progress=False))
        return ppl, seconds

    ppl, eval_s = evaluate(dense_model)  # also the warm-up of the forward kernels before any timed prune
    dense_cmp = None if ctx.cpu else cpu_comparison("dense", "dense", "-", False, "optimum-si", ppl)
    ctx.emit({"kind": "dense", "key": "dense", "label": "dense model", "impl": "-", "ppl": ppl, "eval_s": eval_s,
              "setup": setup, "cpu": dense_cmp}, _line("dense model", None, ppl, dense_cmp))
    for method, pattern, induction, impl in CPU_ROWS if ctx.cpu else GPU_ROWS:
        key = row_key(method, pattern, induction)
        label = f"{method} {pattern}{' + SI' if induction else ''}" + (" (reference loop)" if impl == "reference"
                                                                       else "")
        record: dict[str, Any] = {"kind": "prune", "key": key, "label": label, "method": method, "pattern": pattern,
                                  "induction": induction, "impl": impl}
        if ctx.seconds_left() < MIN_ROW_S:
            ctx.emit({**record, "error": "not run: the section's budget was spent"}, f"{label}: not run (budget)")
            continue
        model = copy.deepcopy(dense_model)  # a pruned model is marked as such: every row starts from a fresh copy
        try:
            record.update(_prune_row(model, calibration, method, pattern, induction, impl, setup, device))
            record["ppl"], record["eval_s"] = evaluate(model)
        except Exception as err:  # noqa: BLE001 - one row's failure is that row's result
            ctx.emit({**record, "error": f"{type(err).__name__}: {err}"}, f"{label}: FAILED {err}")
            continue
        finally:
            del model
        record["cpu"] = None if ctx.cpu else cpu_comparison(key, method, pattern, induction, impl, record["ppl"])
        ctx.emit(record, _line(label, record["prune_s"], record["ppl"], record["cpu"]))


def _line(label: str, seconds: float | None, ppl: float, cpu: dict | None) -> str:
    text = f"{label}:" + (f" prune {seconds:.1f} s," if seconds is not None else "") + f" PPL {ppl:.2f}"
    if cpu:
        cpu_ppl = cpu["cpu_ppl"]
        shown = "/".join(f"{v:.2f}" for v in cpu_ppl) if isinstance(cpu_ppl, (list, tuple)) else f"{cpu_ppl:.2f}"
        text += (f" (CPU {shown}, {cpu['rel_diff']:+.2%}, {'within' if cpu['within'] else 'OUTSIDE'} "
                 f"±{cpu['tolerance']:.1%})")
    return text
