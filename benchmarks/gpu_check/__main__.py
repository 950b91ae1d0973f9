"""Command line of the GPU check (see the package's docstring and docs/gpu-check.md)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.gpu_check.sections import SECTIONS

DEFAULT_BUDGET_S = 480.0
DEFAULT_ASSETS = Path(__file__).resolve().parents[2] / ".gpu-assets"

NEEDS = """What it needs on the GPU machine (each section that lacks something is skipped and says what; the others run):
  all sections    python3 with a CUDA build of torch, transformers, accelerate, safetensors, pytest (the lent
                  machines' image has them), this repository as the working directory
  smollm2         SmolLM2-135M-Instruct: .ci/setup's asset cache, --smollm2 DIR, or the asset pack (--pack, here)
                  carried into .gpu-assets/ (docs/gpu-check.md: two calls, the GGUF is 98 MB)
  llama8b         about 8 GB free disk in --work (the 3 GB checkpoint and one pruned copy at a time)
  semi_structured compute capability 8.0 or newer"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                     epilog=NEEDS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="output folder: gpu_check.json, gpu_check.md, gpu_check.log, "
                                                  "pytest_gpu.xml")
    parser.add_argument("--cpu", action="store_true", help="the plumbing on tiny models, without CUDA (well under "
                                                           "a minute)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help=f"wall-clock budget of the whole check, shared by the sections (default {DEFAULT_BUDGET_S:.0f})")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS),
                        help="run only these sections (in the usual order)")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder on the machine's disk (default: <tmp>/optimum-si-gpu-check; reused by a "
                             "rerun: checkpoints and conversions are kept)")
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help="the asset pack (default .gpu-assets/)")
    parser.add_argument("--smollm2", type=Path, default=None, help="a converted SmolLM2-135M-Instruct folder")
    parser.add_argument("--blocks", type=int, default=None, help="llama8b: decoder blocks in the checkpoint (2)")
    parser.add_argument("--samples", type=int, default=None, help="llama8b: calibration windows (128)")
    parser.add_argument("--seqlen", type=int, default=None, help="llama8b: tokens per window (2048)")
    parser.add_argument("--pytest-paths", nargs="+", default=None,
                        help="cuda_tests: what pytest collects (default: tests/test_gpu.py)")
    parser.add_argument("--pack", nargs="?", const=DEFAULT_ASSETS, type=Path, default=None, metavar="DIR",
                        help="write the asset pack for a GPU machine into DIR (default .gpu-assets/) and exit")
    parser.add_argument("--part-mib", type=int, default=None, help="--pack: size of each GGUF part (56 MiB)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pack is None and args.child is None and args.out is None:
        parser.error("--out DIR is required (where gpu_check.json and gpu_check.md go)")
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        from benchmarks.gpu_check.child import run_child

        return run_child(args.child, args.child_config)
    if args.pack is not None:
        from benchmarks.gpu_check.assets import DEFAULT_PART_MIB, pack

        pack(args.pack, args.part_mib or DEFAULT_PART_MIB)
        return 0
    from benchmarks.gpu_check.run import run_check

    names = [name for name in SECTIONS if name in args.sections]
    options = {"smollm2": str(args.smollm2) if args.smollm2 else None, "blocks": args.blocks,
               "samples": args.samples, "seqlen": args.seqlen, "pytest_paths": args.pytest_paths}
    work = args.work or Path(tempfile.gettempdir()) / "optimum-si-gpu-check"
    doc = run_check(args.out.resolve(), "cpu" if args.cpu else "gpu", args.budget_s, names, work.resolve(),
                    args.assets.resolve(), options, ["python", "-m", "benchmarks.gpu_check", *(argv or sys.argv[1:])],
                    log=lambda line: print(line, flush=True))
    failed = [n for n, s in doc["sections"].items() if s["status"] in ("failed", "timed_out")]
    print(f"wrote {args.out / 'gpu_check.json'} and gpu_check.md; "
          + (f"not complete: {', '.join(failed)}" if failed else "every section ran or was skipped with its reason"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
