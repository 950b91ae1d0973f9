"""RIA, Z-Pruner, OWL + Wanda and ALPS against their authors' released code, on the SmolLM2 protocol.

    python -m benchmarks.fidelity --authors-code DIR --method ria --pattern 50% --side reference
    python -m benchmarks.fidelity --method ria --pattern 50% --side library
    python -m benchmarks.fidelity --table RECORDS_DIR      # markdown table from saved records

Each run prunes the protocol's model (benchmarks/protocol.py: SmolLM2-135M-Instruct fp32, 32 x 512 Python-docs
calibration tokens, seed 0) with one side, scores it with `optimum_si.evaluation.perplexity` on the first
`--eval-windows` x 512 Jargon File tokens (0: prune only) and prints one JSON record on stdout (the authors' own prints
go to stderr). `--save-mask FILE.npz` keeps the zero pattern of every decoder-block Linear for `--table`'s
mask-agreement column. benchmarks/results/fidelity_methods.{json,md} and docs/methods.md ("Fidelity against the
authors' code") hold the results and what they mean; they were measured on CPU with OMP_NUM_THREADS=1.

The authors' code is not part of this repository. Clone each repository into DIR at the commit that was measured:

    git clone https://github.com/<owner>/<repo> DIR/<repo> && git -C DIR/<repo> checkout <commit>

    --method       owner/repo                                                          commit
    ria            biomedical-cybernetics/Relative-importance-and-activation-pruning   7bc55b06924659ea977f7804b773ce3ef0d55c2f
    zpruner        sazzadadib/Z-Pruner                                                 472aaeac8edbbd5351b3ca9b8b4a468b3e6f0216
    owl, wanda     luuyin/OWL                                                          dddb7a4bffe27c73e4c8cf692b3a5e36401532c8
    alps           mazumder-lab/ALPS                                                   8af9e6b5c8b1b06a028bde6065e5c38829df3a19

Functions run: RIA lib/prune.py prune_ria; Z-Pruner lib/prune.py z_pruner; OWL lib/prune_all.py prune_wanda_outlier;
wanda (a control: uniform Wanda as the OWL repository ships it) lib/prune_all.py prune_wanda; ALPS llama.py
llama_sequential calling alps.py ALPS_prune.ALPS_admm. Their imports also need scipy (RIA, Z-Pruner) and pandas (ALPS).
Measured: RIA 50 % and 2:4, Z-Pruner 50 %, OWL + Wanda 70 %, Wanda 70 %, ALPS 50 % and 70 %.

The authors' functions run with the flags their main.py defaults give (per matrix, no --per_outneuron, reallocation,
LSA, reconstruction or GPTQ; OWL Hyper_m 5, Lamda 0.08; ALPS rho 0.1), unmodified, with these run-time patches, none
of which changes a pruning decision:
  1. torch.Tensor.cuda -> identity; torch.cuda.empty_cache / synchronize -> no-ops.
  2. LlamaDecoderLayer.forward computes `position_embeddings` from `position_ids` with the model's own rotary_emb when
     the caller omits them (the authors' loops use the transformers < 4.48 call signature).
  3. model.seqlen = 512, model.hf_device_map = {}; args.model names a Llama; device = cpu.
  4. The repositories' `get_loaders` replaced by the protocol's calibration windows as Wanda-style (inp, tar) tuples.
  5. ALPS: alps.py executed from its text with every literal 'cuda:0' replaced by 'cpu'; llama.py imported unmodified
     with its module-global `args` set; ALPS_admm wrapped only to time each call.
  6. The model in fp32 (the repositories load fp16 or "auto").
The library side is `SIConfig(method=..., sparsity=..., mask_structure=..., induction=False, num_samples=32,
seqlen=512, seed=0)` (owl: method "wanda" with sparsity_profile "owl"); `--set FIELD=VALUE` adds recipe fields, a
dotted FIELD reaching into a nested config, e.g. `--set method_args.pcg_rtol=0` for the table's "library with the
code's 10-step CG" row (recorded before the nested recipe format as `alps_pcg_rtol=0`).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import subprocess
import sys
import time
import types
from argparse import Namespace

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# --method -> (owner, repository, commit measured in benchmarks/results/fidelity_methods.json)
AUTHORS = {
    "ria": ("biomedical-cybernetics", "Relative-importance-and-activation-pruning",
            "7bc55b06924659ea977f7804b773ce3ef0d55c2f"),
    "zpruner": ("sazzadadib", "Z-Pruner", "472aaeac8edbbd5351b3ca9b8b4a468b3e6f0216"),
    "owl": ("luuyin", "OWL", "dddb7a4bffe27c73e4c8cf692b3a5e36401532c8"),
    "wanda": ("luuyin", "OWL", "dddb7a4bffe27c73e4c8cf692b3a5e36401532c8"),
    "alps": ("mazumder-lab", "ALPS", "8af9e6b5c8b1b06a028bde6065e5c38829df3a19"),
}
# --method -> the SIConfig fields that select it on the library side
LIBRARY = {"ria": {"method": "ria"}, "zpruner": {"method": "zpruner"}, "alps": {"method": "alps"},
           "wanda": {"method": "wanda"}, "owl": {"method": "wanda", "sparsity_profile": "owl"}}
PATTERNS = ("50%", "70%", "2:4")
DEFAULT_EVAL_WINDOWS = 20


def clone_command(method: str, directory: str) -> str:
    owner, repo, commit = AUTHORS[method]
    target = os.path.join(directory, repo)
    return f"git clone https://github.com/{owner}/{repo} {target} && git -C {target} checkout {commit}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fidelity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--authors-code", metavar="DIR", help="folder holding the authors' repositories (reference side)")
    parser.add_argument("--method", choices=list(AUTHORS))
    parser.add_argument("--pattern", choices=PATTERNS)
    parser.add_argument("--side", choices=("reference", "library"))
    parser.add_argument("--eval-windows", type=int, default=DEFAULT_EVAL_WINDOWS,
                        help=f"evaluation windows of 512 tokens (default {DEFAULT_EVAL_WINDOWS}; 0: prune only)")
    parser.add_argument("--attn-implementation", choices=("sdpa", "eager"),
                        help="attention kernel (the table's perturbation check reruns the reference with eager)")
    parser.add_argument("--save-mask", metavar="FILE.npz", help="save the zero pattern of every decoder-block Linear")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="library side: an extra SIConfig field (JSON value; FIELD may be dotted into a nested "
                             "config), e.g. method_args.pcg_rtol=0")
    parser.add_argument("--table", metavar="RECORDS_DIR", help="print the markdown table of the records (*.json) there")
    args = parser.parse_args(argv)
    if args.table is not None:
        return args
    if args.method is None or args.pattern is None or args.side is None:
        parser.error("--method, --pattern and --side are required (or --table RECORDS_DIR)")
    if args.eval_windows < 0:
        parser.error(f"--eval-windows must be >= 0, got {args.eval_windows}")
    if args.method == "owl" and ":" in args.pattern:
        parser.error("owl has no N:M form in the library (docs/methods.md): use 50% or 70%")
    if args.side == "reference":
        if args.authors_code is None:
            parser.error("--side reference needs --authors-code DIR; get the code with: "
                         + clone_command(args.method, "DIR"))
        if not os.path.isdir(os.path.join(args.authors_code, AUTHORS[args.method][1])):
            parser.error(f"no {AUTHORS[args.method][1]} under --authors-code {args.authors_code}; get it with: "
                         + clone_command(args.method, args.authors_code))
    if args.set and args.side != "library":
        parser.error("--set applies to --side library only")
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set takes FIELD=VALUE, got {item!r}")
    return args


def _commit(path: str) -> str | None:
    """HEAD of a checkout; a COMMIT file covers a `git archive` export, which has no .git."""
    if os.path.exists(os.path.join(path, ".git")):
        out = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or None
    marker = os.path.join(path, "COMMIT")
    if os.path.isfile(marker):
        with open(marker) as f:
            return f.read().strip()
    return None


def _zero_fraction(model) -> float:
    import torch

    zeros = total = 0
    for layer in model.model.layers:
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                zeros += int((module.weight == 0).sum())
                total += module.weight.numel()
    return zeros / total


def _save_mask(model, path: str) -> None:
    import numpy as np
    import torch

    parts = {}
    for i, layer in enumerate(model.model.layers):
        for name, module in layer.named_modules():
            if isinstance(module, torch.nn.Linear):
                parts[f"{i}.{name}"] = np.packbits((module.weight == 0).cpu().numpy().reshape(-1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **parts)


def _patch_for_authors_code(model) -> None:
    import torch
    from transformers.models.llama import modeling_llama

    # The RIA / Z-Pruner per-matrix threshold sorts `W_metric.flatten().cuda()`, and the loops flush a CUDA cache:
    # on a CPU torch build both would raise, and neither affects which weights are pruned.
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.cuda.empty_cache = lambda: None
    torch.cuda.synchronize = lambda *a, **k: None
    # The authors' loops call each decoder layer with attention_mask and position_ids only (transformers < 4.48);
    # transformers 5 layers need the rotary `position_embeddings`, computed here as LlamaModel.forward would.
    rotary, original = model.model.rotary_emb, modeling_llama.LlamaDecoderLayer.forward
    if not getattr(original, "_fidelity_shim", False):
        def forward(self, hidden_states, *args, position_embeddings=None, position_ids=None, **kwargs):
            if position_embeddings is None:
                pos = position_ids if position_ids is not None else torch.arange(hidden_states.shape[1]).unsqueeze(0)
                position_embeddings = rotary(hidden_states, position_ids=pos)
            return original(self, hidden_states, *args, position_embeddings=position_embeddings,
                            position_ids=position_ids, **kwargs)

        forward._fidelity_shim = True
        modeling_llama.LlamaDecoderLayer.forward = forward
    # Attributes the authors' loops read, set by their own model loaders.
    from benchmarks import protocol

    model.seqlen = protocol.CALIB_SEQLEN
    model.hf_device_map = {}


def _calibration_tuples(calib) -> list:
    """Wanda-style calibration list: (inp [1, seqlen], tar) with every target but the last position ignored."""
    out = []
    for row in calib:
        inp = row.reshape(1, -1).clone()
        tar = inp.clone()
        tar[:, :-1] = -100
        out.append((inp, tar))
    return out


def _load_alps(repo: str):
    """alps.py as a module, from its text with the hard-coded 'cuda:0' devices replaced (its module-level device,
    the weight copy, the scatter buffers and the inverse are all placed on 'cuda:0' literally)."""
    path = os.path.join(repo, "alps.py")
    with open(path) as f:
        text = f.read()
    module = types.ModuleType("alps")
    module.__file__ = path
    exec(compile(text.replace("'cuda:0'", "'cpu'"), path, "exec"), module.__dict__)
    sys.modules["alps"] = module  # llama.py does `from alps import *`
    return module, text.count("'cuda:0'")


def _prune_reference(args, model, tokenizer, calib, sparsity: float, n: int, m: int) -> dict:
    import torch

    owner, repo_name, tested = AUTHORS[args.method]
    repo = os.path.abspath(os.path.join(args.authors_code, repo_name))
    sys.path.insert(0, repo)
    _patch_for_authors_code(model)
    cpu = torch.device("cpu")
    extra: dict = {}
    loader = _calibration_tuples(calib)
    if args.method == "alps":
        alps, replaced = _load_alps(repo)
        import llama  # the authors' llama.py, unmodified

        llama.args = Namespace(nsamples=len(loader), method="ALPS", sp=sparsity, nm_n=n, nm_m=m)
        calls = []
        admm = alps.ALPS_prune.ALPS_admm

        def timed(self, *a, **k):  # per-layer cost for the table's notes; the call itself is untouched
            t0 = time.perf_counter()
            err = admm(self, *a, **k)
            calls.append([list(self.layer.weight.shape), time.perf_counter() - t0, float(err)])
            return err

        alps.ALPS_prune.ALPS_admm = timed
        run = lambda: llama.llama_sequential(model, loader, cpu, nsamples=len(loader))  # noqa: E731
        extra = {"cuda_literals_replaced": replaced, "admm_calls": calls}
    else:
        import importlib

        module = importlib.import_module("lib.prune_all" if args.method in ("owl", "wanda") else "lib.prune")
        # The repositories load c4 / wikitext at their own seqlen (OWL: 2048) here; the protocol's windows instead.
        module.get_loaders = lambda *a, **k: (loader, None)
        function = {"ria": "prune_ria", "zpruner": "z_pruner", "owl": "prune_wanda_outlier",
                    "wanda": "prune_wanda"}[args.method]
        # The defaults of each repository's main.py for the flags these functions read; "llama" in args.model
        # selects their Llama branches.
        flags = Namespace(model="smollm2-135m-llama", seed=0, calib_dataset="c4", nsamples=len(loader),
                          seqlen=model.seqlen, sparsity_ratio=sparsity,
                          sparsity_type=args.pattern if n else "unstructured", a=0.5, reconstruction=False,
                          reallocation=False, lsa=False, importance_score="sum", gptq=False, per_outneuron=False,
                          semi_sparse_acc=False, fast=False, Hyper_m=5.0, Lamda=0.08, use_variant=False,
                          prune_method={"ria": "ria", "zpruner": "z_pruner", "owl": "wanda_owl",
                                        "wanda": "wanda"}[args.method])
        run = lambda: getattr(module, function)(flags, model, tokenizer, cpu, prune_n=n, prune_m=m)  # noqa: E731
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        run()
    commit = _commit(repo)
    return {"prune_s": time.perf_counter() - t0, "authors_repo": f"{owner}/{repo_name}", "authors_commit": commit,
            "authors_commit_is_the_measured_one": commit == tested, **extra}


def recipe_fields(method: str, settings: list[str]) -> dict:
    """The library side's SIConfig fields: the method's, with each `FIELD=VALUE` of `--set` applied (a dotted FIELD
    such as `method_args.pcg_rtol` sets a knob of a nested config)."""
    fields = json.loads(json.dumps(LIBRARY[method]))  # a deep copy: nested dicts are filled in below
    for item in settings:
        path, value = item.split("=", 1)
        *parents, name = path.split(".")
        target = fields
        for parent in parents:
            target = target.setdefault(parent, {})
        target[name] = json.loads(value)
    return fields


def _prune_library(args, model, tokenizer, calib, sparsity: float | None, structure: str) -> dict:
    from benchmarks import protocol
    from optimum_si import SIConfig, SIPruner

    fields = recipe_fields(args.method, args.set)
    config = SIConfig(**fields, sparsity=sparsity, mask_structure=structure, induction=False,
                      num_samples=protocol.CALIB_SAMPLES, seqlen=protocol.CALIB_SEQLEN, seed=protocol.SEED)
    pruner = SIPruner(config, show_progress=False)
    t0 = time.perf_counter()
    pruner.prune(model, tokenizer=tokenizer, dataset=calib)
    return {"prune_s": time.perf_counter() - t0, "report_prune_s": pruner.report.total_seconds, "set": args.set,
            "config": {k: v for k, v in config.to_dict().items() if k != "meta"}}


def run_one(args: argparse.Namespace) -> dict:
    from benchmarks import protocol
    from optimum_si.evaluation import perplexity

    protocol.setup_environment()
    model, tokenizer = protocol.load_model_and_tokenizer()
    if args.attn_implementation:
        model.set_attn_implementation(args.attn_implementation)
    calib = protocol.calibration_ids(tokenizer)
    if ":" in args.pattern:
        n, m = map(int, args.pattern.split(":"))
        sparsity, structure = None, args.pattern
    else:
        n = m = 0
        sparsity, structure = int(args.pattern[:-1]) / 100, "unstructured"
    with contextlib.redirect_stdout(sys.stderr):  # the authors' progress prints: stdout carries only the record
        if args.side == "reference":
            record = _prune_reference(args, model, tokenizer, calib, sparsity or n / m, n, m)
        else:
            record = _prune_library(args, model, tokenizer, calib, sparsity, structure)
    record = {"side": args.side, "method": args.method, "pattern": args.pattern, "eval_windows": args.eval_windows,
              "sparsity": _zero_fraction(model), **record}
    if args.method == "owl":  # the per-block sparsities OWL allotted, read off each block's first Linear
        record["block_sparsity"] = [float((layer.self_attn.q_proj.weight == 0).float().mean())
                                    for layer in model.model.layers]
    if args.save_mask:
        _save_mask(model, args.save_mask)
        record["mask_file"] = os.path.abspath(args.save_mask)
    if args.eval_windows:
        t0 = time.perf_counter()
        record["ppl"] = perplexity(model, protocol.eval_ids(tokenizer), seqlen=protocol.EVAL_SEQLEN,
                                   max_windows=args.eval_windows, show_progress=False)
        record["eval_s"] = time.perf_counter() - t0
    record.update(attn_implementation=model.config._attn_implementation, library_commit=_commit(REPO_ROOT),
                  peak_rss_mb=protocol.peak_rss_mb(), **protocol.machine())
    return record


def _mask_difference(ref: dict, lib: dict) -> str:
    import numpy as np

    paths = ref.get("mask_file"), lib.get("mask_file")
    if not all(p and os.path.isfile(p) for p in paths):
        return "–"
    a, b = (np.load(p) for p in paths)
    diff = sum(int((np.unpackbits(a[k]) != np.unpackbits(b[k])).sum()) for k in a.files)
    return f"{diff / sum(np.unpackbits(a[k]).size for k in a.files):.2e}"


def table(directory: str) -> str:
    """Reference and library records (*.json, the record on the last line) paired by method, pattern, windows and
    attention kernel; one row per library variant (`--set`), against the last reference record of its group."""
    groups: dict = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path) as f:
            record = json.loads(f.read().strip().splitlines()[-1])
        if record.get("ppl") is not None:
            key = (record["method"], record["pattern"], record["eval_windows"], record["attn_implementation"])
            groups.setdefault(key, {}).setdefault(record["side"], []).append(record)
    lines = ["| method | pattern | eval windows | reference PPL | library PPL | ratio | within ±2 % | "
             "prune s ref / lib | mask entries differing |", "|---|---|---:|---:|---:|---:|:-:|---:|---:|"]
    for (method, pattern, windows, _), sides in groups.items():
        if not sides.get("reference"):
            continue
        ref = sides["reference"][-1]
        for lib in sorted(sides.get("library", []), key=lambda r: bool(r.get("set"))):  # the plain library first
            ratio = lib["ppl"] / ref["ppl"]
            label = method + (f" (library {', '.join(lib['set'])})" if lib.get("set") else "")
            lines.append(f"| {label} | {pattern} | {windows} | {ref['ppl']:.2f} | {lib['ppl']:.2f} | {ratio:.4f} | "
                         f"{'yes' if abs(ratio - 1) <= 0.02 else 'no'} | {ref['prune_s']:.0f} / {lib['prune_s']:.0f} | "
                         f"{_mask_difference(ref, lib)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.table is not None:
        print(table(args.table))
        return
    print(json.dumps(run_one(args)), flush=True)


if __name__ == "__main__":
    main()
