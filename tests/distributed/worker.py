"""Run under `torchrun` by tests/test_distributed.py (and alone, for the single-process references): prunes tiny
random models with the public API and saves, per rank, what the tests compare (pruned weights, logits, files)."""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.conftest import tiny_model, token_ids  # noqa: E402

EVAL_IDS = token_ids(2, 24, seed=99)


def _result(model) -> dict:
    with torch.no_grad():
        logits = model(input_ids=EVAL_IDS).logits
    weights = {k: v.detach().clone() for k, v in model.state_dict().items() if "layers" in k and v.dim() >= 2}
    return {"weights": weights, "logits": logits}


def run(scenario: str, out: str, rank: int) -> dict | None:
    from optimum_si import SIPruner

    if scenario in ("wanda", "sparsegpt", "alps"):
        model = tiny_model("llama")
        pruner = SIPruner(method=scenario, sparsity=0.5, show_progress=False)
        pruner.prune(model, dataset=token_ids(8, 32))
        return {**_result(model), "output_error": [block.output_error for block in pruner.report.blocks]}
    if scenario in ("moe-wanda", "moe-sparsegpt"):  # fused experts: each rank routes its tokens to other experts
        model = tiny_model("mixtral")
        SIPruner(method=scenario[4:], sparsity=0.5, show_progress=False).prune(model, dataset=token_ids(8, 32))
        return _result(model)
    if scenario == "induce":  # the distribution-level fold only, from reduced statistics
        model = tiny_model("llama")
        SIPruner(method="wanda", sparsity=0.5, show_progress=False).induce(model, dataset=token_ids(8, 32))
        return _result(model)
    if scenario == "alone":  # OPTIMUM_SI_DATA_PARALLEL=0: each rank prunes alone, here on its own data (which a
        os.environ["OPTIMUM_SI_DATA_PARALLEL"] = "0"  # data-parallel run would refuse)
        model = tiny_model("llama")
        SIPruner(method="wanda", sparsity=0.5, show_progress=False).prune(model, dataset=token_ids(8, 32, seed=rank))
        del os.environ["OPTIMUM_SI_DATA_PARALLEL"]
        return _result(model)
    if scenario in ("cli", "cli-stream"):  # the command line under torchrun (folder and text made by the test)
        from optimum_si.cli import main as cli

        world = os.environ.get("WORLD_SIZE", "1")
        argv = ["prune", "--model", os.path.join(out, "dense"), "--method", "sparsegpt", "--dataset",
                os.path.join(out, "text.txt"), "--num-samples", "4", "--seqlen", "32", "--no-show-progress",
                "--output", os.path.join(out, f"{scenario}-{world}")]
        assert cli(argv + (["--stream"] if scenario == "cli-stream" else [])) == 0
        return None
    if scenario == "owl":  # the dense profiling pass is sharded too
        model = tiny_model("llama")
        pruner = SIPruner(method="wanda", sparsity=0.5, sparsity_profile="owl", profile_args={"lam": 0.2},
                          show_progress=False)
        pruner.prune(model, dataset=token_ids(8, 32))
        return _result(model)
    if scenario == "uneven":  # 7 windows in batches of 2: 4 batches (2 + 2 on two ranks; 2 + 1 + 1 on three)
        model = tiny_model("llama")
        SIPruner(method="sparsegpt", sparsity=0.5, batch_size=2, num_samples=7,
                 show_progress=False).prune(model, dataset=token_ids(7, 32))
        return _result(model)
    if scenario in ("si", "si-uneven"):  # si-uneven: 7 windows, on 3 ranks shares of 3/2/2 with 2/1/2 for training
        model = tiny_model("llama")
        windows = 7 if scenario == "si-uneven" else 8
        pruner = SIPruner(method="wanda", sparsity=0.5, induction=True, num_samples=windows, show_progress=False)
        pruner.prune(model, dataset=token_ids(windows, 32))
        result = _result(model)
        result["kept"] = [block.induction.kept for block in pruner.report.blocks]
        result["loss_after"] = [block.induction.loss_after for block in pruner.report.blocks]
        return result
    if scenario in ("refit", "refit-closed", "refit-global", "refit-unrefit"):
        # The reconstruction: gradients (or Hessians) averaged over the ranks; the global target's stream and the
        # refit model's stream (refit-unrefit: masks chosen on the stream before the refits) per rank; refit-global
        # also steps its learning rate on the cosine schedule, whose length every rank must agree on.
        model = tiny_model("llama")
        mode = "closed-form" if scenario == "refit-closed" else "gradient"
        target = "global" if scenario in ("refit-global", "refit-unrefit") else "local"
        stream = "unrefit" if scenario == "refit-unrefit" else "refit"
        schedule = "cosine" if scenario == "refit-global" else "constant"
        pruner = SIPruner(method="wanda", sparsity=0.5, num_samples=8, show_progress=False,
                          reconstruction={"mode": mode, "lr": 1e-3, "target": target, "mask_stream": stream,
                                          "lr_schedule": schedule})
        pruner.prune(model, dataset=token_ids(8, 32))
        result = _result(model)
        result["kept"] = [block.reconstruction.kept for block in pruner.report.blocks]
        result["loss_after"] = [block.reconstruction.loss_after for block in pruner.report.blocks]
        return result
    if scenario == "save":  # in memory, saved: only rank 0 writes
        model = tiny_model("llama")
        SIPruner(method="wanda", sparsity=0.5, show_progress=False).prune(
            model, dataset=token_ids(8, 32), save_dir=os.path.join(out, "saved"))
        return _result(model)
    if scenario == "stream":
        SIPruner(method="sparsegpt", sparsity=0.5, show_progress=False).prune(
            os.path.join(out, "source"), save_dir=os.path.join(out, f"streamed-{os.environ.get('WORLD_SIZE', '1')}"),
            dataset=token_ids(8, 32))
        return None
    if scenario in ("stream_fail", "stream_resume"):
        if scenario == "stream_fail" and rank == 1:  # fails in block 1's statistics pass, after block 0 was written;
            from optimum_si.pipeline.statistics import StatisticsPass  # rank 0 then waits in that pass's reduction

            collect = StatisticsPass.collect

            def failing(self, index, *args, **kwargs):
                if index == 1:
                    raise ValueError("injected failure on rank 1")
                return collect(self, index, *args, **kwargs)

            StatisticsPass.collect = failing  # type: ignore[method-assign]
        SIPruner(method="sparsegpt", sparsity=0.5, show_progress=False).prune(
            os.path.join(out, "source"), save_dir=os.path.join(out, "resumed"), dataset=token_ids(8, 32))
        return None
    if scenario.startswith("disagree-"):  # one rank given another input: every rank must stop, naming it
        return _disagree(scenario, out, rank)
    raise ValueError(scenario)


def _disagree(scenario: str, out: str, rank: int) -> dict:
    from optimum_si import SIPruner

    try:
        if scenario == "disagree-recipe":  # rank 1 asks for 70 %, rank 0 for 50 %
            model = tiny_model("llama")
            SIPruner(method="sparsegpt", sparsity=0.7 if rank == 1 else 0.5, show_progress=False).prune(
                model, dataset=token_ids(8, 32), save_dir=os.path.join(out, "disagree-recipe"))
        elif scenario == "disagree-source":  # rank 1 streams another model's folder
            SIPruner(method="sparsegpt", sparsity=0.5, show_progress=False).prune(
                os.path.join(out, "source" if rank == 0 else "other-source"),
                save_dir=os.path.join(out, "disagree-source"), dataset=token_ids(8, 32))
        elif scenario == "disagree-output":  # rank 1 names another output folder
            SIPruner(method="magnitude", sparsity=0.5, show_progress=False).prune(
                os.path.join(out, "source"), save_dir=os.path.join(out, f"disagree-output-{rank}"))
        elif scenario == "disagree-save":  # the same pruned model, saved to two folders
            model = tiny_model("llama")
            pruner = SIPruner(method="magnitude", sparsity=0.5, show_progress=False)
            pruner.prune(model)
            pruner.save(model, os.path.join(out, f"disagree-save-{rank}"))
    except ValueError as err:
        return {"error": str(err)}
    return {"error": None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("scenarios", nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    for scenario in args.scenarios:
        result = run(scenario, args.out, rank)
        if result is not None:
            torch.save(result, os.path.join(args.out, f"{scenario}-w{world}-r{rank}.pt"))


if __name__ == "__main__":
    main()
