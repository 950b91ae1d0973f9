"""Cost of refreshing the Wanda metric during induction: fast (eq. 11, cached Hessian diagonal) vs classical
(re-collect the input statistics with forward passes over the calibration windows), on SmolLM2-135M block 0.

    python -m benchmarks.refresh_cost          # writes benchmarks/results/refresh_cost.json and .md

Both refreshes produce the new masks of all 7 Linears of the block from the current column scales; the classical
one also re-runs the block over the 32 x 512 calibration windows to re-measure ||x_j||^2, as the paper's Table 3
"classical recompute" does. Timed over several refreshes after a warm-up; the ratio is measured in one run.
"""

from __future__ import annotations

import json
import os
import time

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(repeats: int = 5) -> dict:
    from benchmarks import protocol
    from optimum_si import SIConfig
    from optimum_si.engine import capture_block_inputs, select_linears
    from optimum_si.induction import BlockInducer, ScaledLinear, _set_submodule
    from optimum_si.stats import InputStatsCollector
    from optimum_si.weights import UndoLog

    protocol.setup_environment()
    model, tokenizer = protocol.load_model_and_tokenizer()
    calib = protocol.calibration_ids(tokenizer)
    inputs = capture_block_inputs(model, model.model.layers, list(calib.split(1)), torch.device("cpu"))
    block = model.model.layers[0]
    linears = select_linears(block, "model.layers.0", None, [])
    with InputStatsCollector(linears, with_hessian=False) as collector, torch.no_grad():
        for hidden in inputs.hidden:
            try:
                block(hidden, **inputs.kwargs[1])
            except Exception:  # StopForward once every Linear has its input
                pass
            collector.end_pass()
    results = {}
    for mode in ("fast", "classical"):
        config = SIConfig(method="wanda", induction=True, induction_refresh=mode)
        wrappers = {}
        for name, linear in linears.items():
            weight = linear.weight.detach().float()
            keep = torch.ones_like(weight, dtype=torch.bool)
            wrappers[name] = ScaledLinear(linear, weight, keep, weight, collector.stats[name].sq_norms, config)
            with torch.no_grad():
                wrappers[name].log_col.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
            _set_submodule(block, name, wrappers[name])
        inducer = BlockInducer(config, UndoLog(enabled=False))
        inducer._refresh(block, wrappers, inputs.hidden, inputs.kwargs)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            inducer._refresh(block, wrappers, inputs.hidden, inputs.kwargs)
        results[mode] = (time.perf_counter() - started) / repeats
        for name, linear in linears.items():
            _set_submodule(block, name, linear)
    record = {"fast_s_per_refresh": results["fast"], "classical_s_per_refresh": results["classical"],
              "speedup": results["classical"] / results["fast"], "windows": list(calib.shape), **protocol.machine()}
    os.makedirs(RESULTS_DIR, exist_ok=True)
    with open(os.path.join(RESULTS_DIR, "refresh_cost.json"), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    table = (
        "| refresh of the Wanda metric + masks (block 0, 7 Linears) | seconds per refresh |\n|---|---:|\n"
        f"| classical (re-collect statistics over {calib.shape[0]} x {calib.shape[1]} tokens) | "
        f"{results['classical']:.3f} |\n| fast (eq. 11, cached diag H) | {results['fast']:.4f} |\n\n"
        f"Speed-up: {record['speedup']:.1f}x (SmolLM2-135M, CPU, {record['threads']} threads, mean of {repeats}).\n"
    )
    with open(os.path.join(RESULTS_DIR, "refresh_cost.md"), "w", encoding="utf-8") as handle:
        handle.write(table)
    print(table)
    return record


if __name__ == "__main__":
    main()
