"""Section `environment`: the machine, the software versions, and what each later section needs and finds here."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

from benchmarks.gpu_check import assets
from benchmarks.gpu_check.child import ChildContext


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit(repo: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _host_memory_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=20, check=False)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def cuda_facts() -> dict:
    """What torch sees of the GPU (everything None without CUDA)."""
    import torch

    facts: dict = {"cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
                   "device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    if not facts["cuda_available"]:
        return facts
    props = torch.cuda.get_device_properties(0)
    facts.update(
        name=props.name, capability=f"{props.major}.{props.minor}", memory_gb=props.total_memory / 2**30,
        multiprocessors=props.multi_processor_count, bf16_supported=torch.cuda.is_bf16_supported(),
        cudnn=torch.backends.cudnn.version(), driver=_driver(),
        cusparselt=getattr(getattr(torch.backends, "cusparselt", None), "is_available", lambda: None)(),
        # float32 matmuls in TF32 would change every fp32 result against the CPU tables: recorded, never changed
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
        float32_matmul_precision=torch.get_float32_matmul_precision(),
        # one GPU cannot run data parallelism over NCCL (NCCL refuses two ranks on one device)
        nccl=torch.distributed.is_nccl_available() if torch.distributed.is_available() else False,
    )
    return facts


def run(ctx: ChildContext) -> None:
    import torch

    from optimum_si import __version__

    record = {
        "kind": "environment", "python": sys.version.split()[0], "platform": platform.platform(),
        "torch": torch.__version__, "transformers": _version("transformers"), "accelerate": _version("accelerate"),
        "safetensors": _version("safetensors"), "optimum_si": __version__, "commit": _git_commit(ctx.repo),
        "cpu_cores": os.cpu_count(), "host_memory_gb": _host_memory_gb(),
        "work_dir": ctx.work, "work_disk_free_gb": shutil.disk_usage(ctx.work).free / 2**30,
        **cuda_facts(),
    }
    gpu = record.get("name") or "no CUDA device"
    ctx.emit(record, f"{gpu}, torch {record['torch']} (CUDA {record['torch_cuda']}), "
                     f"transformers {record['transformers']}, optimum-si {record['optimum_si']}")
    needs = assets.section_needs(ctx)
    ctx.emit({"kind": "needs", "sections": needs},
             "; ".join(f"{name}: {'ready' if n['ready'] else 'missing ' + ', '.join(n['missing'])}"
                       for name, n in needs.items()))
