"""Cost of refreshing the Wanda metric during induction: fast (eq. 11, cached Hessian diagonal) vs classical
(re-collect the input statistics with forward passes over the calibration windows), on SmolLM2-135M block 0.

    python -m benchmarks.refresh_cost                # writes benchmarks/results/refresh_cost.json and .md
    python -m benchmarks.refresh_cost --repeats 2

Both refreshes produce the new masks of all 7 Linears of the block from the current column scales; the classical
one also re-runs the block over the 32 x 512 calibration windows to re-measure ||x_j||^2, as the paper's Table 3
"classical recompute" does. Timed over several refreshes after a warm-up; the ratio is measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _wrap(block, linears: dict, stats: dict, config) -> dict:
    """Put a ScaledLinear with random column scales (the state a refresh meets mid-training) in place of each Linear."""
    from optimum_si.induction.inducer import _set_submodule
    from optimum_si.induction.scaled_linear import ScaledLinear

    wrappers = {}
    for name, linear in linears.items():
        weight = linear.weight.detach().float()
        keep = torch.ones_like(weight, dtype=torch.bool)
        wrappers[name] = ScaledLinear(linear, weight, keep, weight, stats[name].sq_norms, config.induction,
                                      config.pruning_method, config.pattern)
        with torch.no_grad():
            wrappers[name].log_col.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
        _set_submodule(block, name, wrappers[name])
    return wrappers


def seconds_per_refresh(block, inputs, mode: str, repeats: int) -> float:
    """Mean seconds of one refresh of every Linear's mask in `block` ('fast' or 'classical'), after a warm-up."""
    from optimum_si import InductionConfig, SIConfig
    from optimum_si.induction.inducer import BlockInducer, _set_submodule
    from optimum_si.modeling.capture import run_block
    from optimum_si.modeling.targets import plan_block
    from optimum_si.modeling.weights import UndoLog
    from optimum_si.observers.stats import InputStatsCollector

    config = SIConfig(method="wanda", induction=InductionConfig(refresh=mode))
    linears = {name: target.module for name, target in plan_block(block, "block", None, []).targets.items()}
    with InputStatsCollector(linears, with_hessian=False) as collector:
        run_block(block, inputs, collector)
    wrappers = _wrap(block, linears, collector.stats, config)
    inducer = BlockInducer(config.induction, config.pruning_method, config.seed, UndoLog(enabled=False),
                           {name: config.pattern for name in linears})
    hidden = list(inputs.hidden)
    try:
        inducer._refresh(block, wrappers, hidden, inputs.kwargs)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            inducer._refresh(block, wrappers, hidden, inputs.kwargs)
        return (time.perf_counter() - started) / repeats
    finally:
        for name, linear in linears.items():
            _set_submodule(block, name, linear)


def markdown(record: dict, repeats: int) -> str:
    samples, seqlen = record["windows"]
    return (
        "| refresh of the Wanda metric + masks (block 0, 7 Linears) | seconds per refresh |\n|---|---:|\n"
        f"| classical (re-collect statistics over {samples} x {seqlen} tokens) | "
        f"{record['classical_s_per_refresh']:.3f} |\n| fast (eq. 11, cached diag H) | "
        f"{record['fast_s_per_refresh']:.4f} |\n\n"
        f"Speed-up: {record['speedup']:.1f}x (SmolLM2-135M, CPU, {record['threads']} threads, mean of {repeats}).\n"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed refreshes of each kind (after one warm-up)")
    args = parser.parse_args(argv)
    from benchmarks import protocol
    from optimum_si.modeling.capture import capture_block_inputs

    protocol.setup_environment()
    model, tokenizer = protocol.load_model_and_tokenizer()
    calib = protocol.calibration_ids(tokenizer)
    inputs = capture_block_inputs(model, model.model.layers, list(calib.split(1)), torch.device("cpu"))
    block = model.model.layers[0]
    results = {mode: seconds_per_refresh(block, inputs, mode, args.repeats) for mode in ("fast", "classical")}
    record = {"fast_s_per_refresh": results["fast"], "classical_s_per_refresh": results["classical"],
              "speedup": results["classical"] / results["fast"], "windows": list(calib.shape), **protocol.machine()}
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, "refresh_cost.json"), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    table = markdown(record, args.repeats)
    with open(os.path.join(RESULTS_DIR, "refresh_cost.md"), "w", encoding="utf-8") as handle:
        handle.write(table)
    print(table)
    return record


if __name__ == "__main__":
    main()
