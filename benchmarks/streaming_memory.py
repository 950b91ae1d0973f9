"""Host memory of streaming pruning against depth, on random-weight checkpoints with real Llama layer shapes.

    python -m benchmarks.streaming_memory                                  # 7B and 70B shapes, 2/4/8 blocks
    python -m benchmarks.streaming_memory --shapes llama2-7b --depths 2 --update
    python -m benchmarks.streaming_memory --build-only                     # only (re)build the checkpoints
    python -m benchmarks.streaming_memory --tiny                           # tiny shapes, seconds (the test's mode)

Checkpoints: bf16, exact layer shapes of Llama-2-7B (hidden 4096, MLP 11008, 32/32 heads, vocab 32000) and
Llama-3-70B (hidden 8192, MLP 28672, 64 heads / 8 KV heads, vocab 128256, rope_theta 500000), untied LM head,
truncated to a few decoder blocks, weights N(0, 0.02) and norms 1. They are written block by block (one tensor in
memory at a time) into a pool of shards under `<cache>/bench-checkpoints/<shape>/pool/` (one shard per block, one for
the non-block tensors; reused when the spec matches), and each depth is a folder of hard links to the first shards
with its own config.json and index, so a depth never sees the tensors of deeper blocks.

Each (shape, depth) runs streaming Wanda 50 % (`SIPruner(...).prune(folder, save_dir=...)`) in its own process on
random token ids. Recorded: peak RSS (ru_maxrss of that process), a sampled breakdown into anonymous and file-backed
RSS (safetensors tensors are mmap-ed, so source weights count as file pages), the sampled peak per block, how many
shard files were mapped at most, per-block and total seconds (`pruner.report`), checkpoint and output sizes. The
output folder is checked to be complete and deleted. Results: benchmarks/results/streaming_memory.json and .md,
with the acceptance checks of streaming: (a) peak RSS(8 blocks) <= 1.15 x peak RSS(2 blocks) per shape, (b) peak
RSS of the 70B shape at 8 blocks below its checkpoint size on disk.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# Where the block walker logs each finished block; the sampler's phases follow those lines.
WALKER_LOGGER = "optimum_si.pipeline.walker"
FORMAT_VERSION = 1
STD = 0.02
FLATNESS_LIMIT = 1.15
ACCEPTANCE_SHAPE = "llama3-70b"

_LLAMA = dict(model_type="llama", hidden_act="silu", rms_norm_eps=1e-5, tie_word_embeddings=False,
              attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2)
SHAPES: dict[str, dict] = {
    "llama2-7b": dict(_LLAMA, hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                      vocab_size=32000, max_position_embeddings=4096, rope_theta=10000.0),
    "llama3-8b": dict(_LLAMA, hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                      vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0, bos_token_id=128000,
                      eos_token_id=128001),
    "llama3-70b": dict(_LLAMA, hidden_size=8192, intermediate_size=28672, num_attention_heads=64, num_key_value_heads=8,
                       vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0, bos_token_id=128000,
                       eos_token_id=128001),
    # Same structure, toy sizes: multi-head like Llama-2, grouped-query like Llama-3.
    "tiny-mha": dict(_LLAMA, hidden_size=64, intermediate_size=172, num_attention_heads=4, num_key_value_heads=4,
                     vocab_size=320, max_position_embeddings=256, rope_theta=10000.0),
    "tiny-gqa": dict(_LLAMA, hidden_size=128, intermediate_size=448, num_attention_heads=8, num_key_value_heads=2,
                     vocab_size=640, max_position_embeddings=256, rope_theta=500000.0),
}
FULL = dict(shapes=["llama2-7b", "llama3-70b"], depths=[2, 4, 8], samples=4, seqlen=128, name="streaming_memory")
TINY = dict(shapes=["tiny-mha", "tiny-gqa"], depths=[2, 4, 8], samples=4, seqlen=32, name="streaming_memory_tiny")


# ------------------------------------------------------------------------------------------------ checkpoints
def bench_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir is None:
        from tests.assets import default_cache_dir

        cache_dir = default_cache_dir()
    return Path(cache_dir) / "bench-checkpoints"


def model_config(shape: str, depth: int):
    from transformers import LlamaConfig

    spec = dict(SHAPES[shape])
    spec.pop("model_type")
    config = LlamaConfig(**spec, num_hidden_layers=depth)
    config.dtype = "bfloat16"
    return config


def tensor_layout(shape: str) -> tuple[list[tuple[str, tuple[int, ...]]], list[tuple[str, tuple[int, ...]]]]:
    """(block 0's tensors, the non-block tensors) as (name, shape), read off a meta-device model."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(model_config(shape, 1))
    names = [(n, tuple(p.shape)) for n, p in skeleton.named_parameters()]
    block = [(n, s) for n, s in names if n.startswith("model.layers.0.")]
    other = [(n, s) for n, s in names if not n.startswith("model.layers.")]
    return block, other


def _random_tensor(name: str, shape: tuple[int, ...], seed: int, device: str = "cpu"):
    import torch

    if len(shape) == 1:  # RMSNorm weights
        return torch.ones(shape, dtype=torch.bfloat16)
    generator = torch.Generator(device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return torch.empty(shape, dtype=torch.bfloat16, device=device).normal_(0.0, STD, generator=generator).cpu()


def write_streamed_safetensors(path: Path, layout: list[tuple[str, tuple[int, ...]]], make) -> int:
    """Write a bf16 safetensors file tensor by tensor (`make(name, shape)` builds one; it is freed once written)."""
    import torch

    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    ordered = sorted(layout)
    for name, shape in ordered:
        size = 2
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        for name, shape in ordered:
            tensor = make(name, shape).contiguous()
            if tensor.dtype != torch.bfloat16 or tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"{name}: expected bf16 {shape}, got {tensor.dtype} {tuple(tensor.shape)}")
            handle.write(tensor.view(-1).view(torch.uint8).numpy())
            del tensor
    os.replace(tmp, path)
    return offset


def _pool(shape: str, cache_dir, device: str = "cpu") -> Path:
    pool = bench_dir(cache_dir) / shape / "pool"
    spec = {"format": FORMAT_VERSION, "shape": SHAPES[shape], "std": STD}
    if device != "cpu":  # another generator gives other values: a pool is never a mix of the two
        spec["generator_device"] = device
    spec_path = pool / "spec.json"
    if pool.is_dir():
        try:
            same = json.loads(spec_path.read_text()) == spec
        except (OSError, json.JSONDecodeError):
            same = False
        if not same:
            shutil.rmtree(pool)
    pool.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec, indent=2))
    return pool


def build_checkpoint(shape: str, depth: int, cache_dir=None, seed: int = 0, log=print, device: str = "cpu") -> Path:
    """`<cache>/bench-checkpoints/<shape>/L<depth>/`: config, index and hard links to the pool's shards.

    `device` draws the random weights there ("cuda": a Llama-3-8B-shaped block in well under a second instead of
    about 5 s on one CPU core); the values depend on it, so each device has its own pool."""
    block, other = tensor_layout(shape)
    pool = _pool(shape, cache_dir, device)
    shards = []
    for i in range(depth):
        path = pool / f"block-{i:05d}.safetensors"
        if not path.is_file():
            started = time.perf_counter()
            layout = [(n.replace("model.layers.0.", f"model.layers.{i}.", 1), s) for n, s in block]
            size = write_streamed_safetensors(path, layout, lambda n, s: _random_tensor(n, s, seed, device))
            log(f"  built {shape} block {i}: {size / 1e9:.2f} GB in {time.perf_counter() - started:.1f} s")
        shards.append(path)
    path = pool / "other.safetensors"
    if not path.is_file():
        started = time.perf_counter()
        size = write_streamed_safetensors(path, other, lambda n, s: _random_tensor(n, s, seed, device))
        log(f"  built {shape} non-block tensors: {size / 1e9:.2f} GB in {time.perf_counter() - started:.1f} s")
    shards.append(path)

    folder = bench_dir(cache_dir) / shape / f"L{depth}"
    if folder.exists():
        shutil.rmtree(folder)  # links and two small files: cheaper to redo than to check
    folder.mkdir(parents=True)
    count = len(shards)
    weight_map, total = {}, 0
    for i, source in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{count:05d}.safetensors"
        try:
            os.link(source, folder / name)
        except OSError:  # no hard links on this filesystem
            shutil.copyfile(source, folder / name)
        layout = other if source.name == "other.safetensors" else \
            [(n.replace("model.layers.0.", f"model.layers.{i - 1}.", 1), s) for n, s in block]
        for key, _shape in layout:
            weight_map[key] = name
        total += source.stat().st_size
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    model_config(shape, depth).save_pretrained(folder)
    return folder


def checkpoint_bytes(folder: str | os.PathLike) -> int:
    """Size of the weights of a checkpoint folder (the shards its index lists), hard links counted in full."""
    index = json.loads((Path(folder) / "model.safetensors.index.json").read_text())
    return sum((Path(folder) / name).stat().st_size for name in set(index["weight_map"].values()))


def folder_bytes(folder: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------------ one run (child)
def _status_mb() -> dict[str, float]:
    values = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                values[key] = int(line.split()[1]) / 1024.0
    return values


def _mapped_shards() -> int:
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as handle:
        return len({line.split(None, 5)[-1].strip() for line in handle if line.rstrip().endswith(".safetensors")})


class RssSampler(threading.Thread):
    """Samples /proc/self/status (and every few samples /proc/self/maps) into per-phase peaks."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.phase = "setup"
        self.phases: dict[str, dict[str, float]] = {}
        self.peak: dict[str, float] = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0, "anon_at_peak": 0.0,
                                       "file_at_peak": 0.0, "mapped_shards": 0}
        self._halt = threading.Event()
        self._lock = threading.Lock()  # the phase handler samples too, from the pruning thread

    def sample(self, with_maps: bool = False) -> None:
        with self._lock:
            self._sample(with_maps)

    def _sample(self, with_maps: bool) -> None:
        values = _status_mb()
        phase = self.phases.setdefault(self.phase, {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0, "mapped_shards": 0})
        for key in ("VmRSS", "RssAnon", "RssFile"):
            phase[key] = max(phase[key], values.get(key, 0.0))
            self.peak[key] = max(self.peak[key], values.get(key, 0.0))
        if values.get("VmRSS", 0.0) >= self.peak["VmRSS"]:
            self.peak["anon_at_peak"] = values.get("RssAnon", 0.0)
            self.peak["file_at_peak"] = values.get("RssFile", 0.0)
        if with_maps:
            mapped = _mapped_shards()
            phase["mapped_shards"] = max(phase["mapped_shards"], mapped)
            self.peak["mapped_shards"] = max(self.peak["mapped_shards"], mapped)

    def run(self) -> None:
        tick = 0
        while not self._halt.wait(self.interval):
            self.sample(with_maps=tick % 5 == 0)
            tick += 1

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample(with_maps=True)


class _BlockPhases(logging.Handler):
    """Moves the sampler to the next phase when the block walker logs a finished block ("block i/n pruned ...")."""

    def __init__(self, sampler: RssSampler) -> None:
        super().__init__(logging.INFO)
        self.sampler = sampler

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("block %d/%d pruned"):
            done, total = record.args[0], record.args[1]
            # A closing reading of the finished phase and an opening one of the next: a block shorter than the
            # sampling interval still gets its own entry.
            self.sampler.sample()
            self.sampler.phase = f"block {done}" if done < total else "finalise"
            self.sampler.sample()


def check_output(source: str | os.PathLike, output: str | os.PathLike) -> dict:
    """Is `output` a complete pruned copy of `source`: every tensor, same shapes, and Linears of blocks at 50 %?"""
    from optimum_si.checkpoint.index import CheckpointIndex
    from optimum_si.checkpoint.progress import is_complete

    src, out = CheckpointIndex(os.fspath(source)), CheckpointIndex(os.fspath(output))
    missing = sorted(set(src.shapes) - set(out.shapes))
    extra = sorted(set(out.shapes) - set(src.shapes))
    wrong = sorted(k for k in set(src.shapes) & set(out.shapes) if src.shapes[k] != out.shapes[k])
    zeros = numel = 0
    for key in out.shapes:
        if key.startswith("model.layers.") and key.endswith("_proj.weight"):
            tensor = out.read(key)
            zeros += int((tensor == 0).sum())
            numel += tensor.numel()
            del tensor
    return {"complete": is_complete(os.fspath(output)) and not (missing or extra or wrong),
            "missing": missing[:5], "extra": extra[:5], "wrong_shape": wrong[:5],
            "block_sparsity": zeros / numel if numel else 0.0}


def measure(checkpoint: str, save_dir: str, samples: int, seqlen: int, device: str | None = None,
            batch_size: int = 1, interval: float = 0.02, seed: int = 0) -> dict:
    """One streaming Wanda 50 % run in this process, with its memory and timings."""
    sampler = RssSampler(interval)
    sampler.start()
    import torch

    from benchmarks import protocol
    from optimum_si import SIConfig, SIPruner

    protocol.setup_environment()
    rss_before = _status_mb()
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    ids = torch.randint(0, config["vocab_size"], (samples, seqlen), generator=torch.Generator().manual_seed(seed))
    pruner = SIPruner(SIConfig(method="wanda", sparsity=0.5, num_samples=samples, seqlen=seqlen, batch_size=batch_size),
                      device=device, show_progress=False)
    handler = _BlockPhases(sampler)
    walker_logger = logging.getLogger(WALKER_LOGGER)
    walker_logger.addHandler(handler)
    walker_logger.setLevel(logging.INFO)
    sampler.phase = "block 0"  # setup + capture + block 0
    if device and device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    pruner.prune(checkpoint, save_dir=save_dir, dataset=ids)
    wall = time.perf_counter() - started
    sampler.stop()
    walker_logger.removeHandler(handler)
    report = pruner.report
    phases = sampler.phases
    blocks = [phases[f"block {i}"] for i in range(config["num_hidden_layers"]) if f"block {i}" in phases]
    record = {
        "checkpoint": os.fspath(checkpoint),
        "depth": config["num_hidden_layers"],
        "hidden_size": config["hidden_size"],
        "intermediate_size": config["intermediate_size"],
        "num_key_value_heads": config["num_key_value_heads"],
        "vocab_size": config["vocab_size"],
        "samples": samples,
        "seqlen": seqlen,
        "batch_size": batch_size,
        "device": device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "rss_before_prune_mb": rss_before.get("VmRSS", 0.0),
        "sampled_peak_rss_mb": sampler.peak["VmRSS"],
        "peak_rss_anon_mb": sampler.peak["RssAnon"],
        "peak_rss_file_mb": sampler.peak["RssFile"],
        "anon_at_peak_mb": sampler.peak["anon_at_peak"],
        "file_at_peak_mb": sampler.peak["file_at_peak"],
        "block_peak_rss_mb": [b["VmRSS"] for b in blocks],
        "block_peak_rss_anon_mb": [b["RssAnon"] for b in blocks],
        "finalise_peak_rss_mb": phases.get("finalise", {}).get("VmRSS"),
        "max_mapped_shards": sampler.peak["mapped_shards"],
        "block_seconds": [b.seconds for b in report.blocks],
        "prune_seconds": report.total_seconds,
        "total_seconds": wall,
        "sparsity": report.sparsity,
        "output_bytes": folder_bytes(save_dir),
        "peak_device_mb": torch.cuda.max_memory_allocated() / 2**20 if device and device.startswith("cuda") else None,
        "sample_interval_s": interval,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        **protocol.machine(),
    }
    record["output"] = check_output(checkpoint, save_dir)
    return record


# ------------------------------------------------------------------------------------------------ driver
def remove_output(save_dir: Path) -> None:
    """Delete a run's output folder and what optimum-si keeps beside it: the unfinished run's hidden partial folder
    (`.<name>.optimum-si-partial`), staging and old folders of an interrupted swap, and the lock and owner files."""
    from optimum_si.checkpoint.folders import sibling

    target = os.path.realpath(save_dir)
    for folder in (target, *(sibling(target, kind) for kind in ("partial", "staging", "old"))):
        if os.path.isdir(folder):
            shutil.rmtree(folder)
    for kind in ("lock", "owner"):
        path = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.optimum-si.{kind}")
        if os.path.exists(path):
            os.remove(path)


def run_case(shape: str, depth: int, samples: int, seqlen: int, cache_dir=None, device: str | None = None,
             batch_size: int = 1, keep_output: bool = False, interval: float = 0.02, log=print) -> dict:
    """Build (or reuse) the checkpoint and measure one run in a child process; the output is deleted unless kept."""
    checkpoint = build_checkpoint(shape, depth, cache_dir, log=log)
    save_dir = bench_dir(cache_dir) / "_runs" / f"{shape}-L{depth}"
    remove_output(save_dir)  # a failed earlier run would otherwise be resumed, and measured as a partial run
    command = [sys.executable, "-m", "benchmarks.streaming_memory", "--one", os.fspath(checkpoint), os.fspath(save_dir),
               "--samples", str(samples), "--seqlen", str(seqlen), "--batch-size", str(batch_size),
               "--interval", str(interval)] + (["--device", device] if device else [])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    try:
        out = subprocess.run(command, check=False, capture_output=True, text=True, cwd=root, env=env)
        if out.returncode != 0:
            raise RuntimeError(f"{shape} L{depth} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
        record = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if not keep_output:
            remove_output(save_dir)
    record.update(shape=shape, checkpoint_bytes=checkpoint_bytes(checkpoint))
    if keep_output:
        record["output_dir"] = os.fspath(save_dir)
    return record


def acceptance(records: list[dict], limit: float = FLATNESS_LIMIT) -> dict:
    """(a) flatness per shape: peak RSS at the deepest run <= limit x at the shallowest (2 vs 8 blocks in the full
    benchmark); (b) for each shape, peak RSS at its deepest run below that checkpoint's size on disk (the streaming
    criterion is the 70B shape's)."""
    checks: dict = {"flatness": {}, "below_checkpoint": {}}
    for shape in sorted({r["shape"] for r in records}):
        runs = sorted((r for r in records if r["shape"] == shape), key=lambda r: r["depth"])
        low, high = runs[0], runs[-1]
        if high["depth"] > low["depth"]:
            ratio = high["peak_rss_mb"] / low["peak_rss_mb"]
            checks["flatness"][shape] = {"depths": [low["depth"], high["depth"]], "peak_rss_mb": [low["peak_rss_mb"],
                                         high["peak_rss_mb"]], "ratio": ratio, "limit": limit, "pass": ratio <= limit}
        rss_bytes = high["peak_rss_mb"] * 2**20
        checks["below_checkpoint"][shape] = {"depth": high["depth"], "peak_rss_bytes": rss_bytes,
                                             "checkpoint_bytes": high["checkpoint_bytes"],
                                             "pass": rss_bytes < high["checkpoint_bytes"]}
    flat = [c["pass"] for c in checks["flatness"].values()]
    checks["flatness_pass"] = all(flat) if flat else None
    target = checks["below_checkpoint"].get(ACCEPTANCE_SHAPE)
    checks["acceptance_70b_below_checkpoint"] = None if target is None or target["depth"] < 8 else target["pass"]
    return checks


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def markdown(records: list[dict]) -> str:
    lines = ["| shape | blocks | checkpoint GB | peak RSS MB | RssAnon peak MB | RssFile peak MB | RSS before prune MB "
             "| block peaks MB (sampled) | s / block (mean) | total s | output GB |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in sorted(records, key=lambda r: (r["shape"], r["depth"])):
        peaks = " / ".join(f"{v:.0f}" for v in r["block_peak_rss_mb"])
        lines.append(f"| {r['shape']} | {r['depth']} | {r['checkpoint_bytes'] / 1e9:.2f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_rss_anon_mb']:.0f} | {r['peak_rss_file_mb']:.0f} | {r['rss_before_prune_mb']:.0f} | "
                     f"{peaks} | {_mean(r['block_seconds']):.2f} | {r['total_seconds']:.1f} | "
                     f"{r['output_bytes'] / 1e9:.2f} |")
    checks = acceptance(records) if records else {"flatness": {}, "below_checkpoint": {}}
    lines.append("")
    for shape, c in checks["flatness"].items():
        lines.append(f"- (a) flatness, {shape}: peak RSS {c['peak_rss_mb'][1]:.0f} MB at {c['depths'][1]} blocks vs "
                     f"{c['peak_rss_mb'][0]:.0f} MB at {c['depths'][0]}: x{c['ratio']:.3f} (limit x{c['limit']}) "
                     f"-> {'PASS' if c['pass'] else 'FAIL'}")
    for shape, c in checks["below_checkpoint"].items():
        tag = "(b)" if shape == ACCEPTANCE_SHAPE else "(b, informative)"
        lines.append(f"- {tag} {shape} at {c['depth']} blocks: peak RSS {c['peak_rss_bytes'] / 1e9:.2f} GB vs "
                     f"checkpoint {c['checkpoint_bytes'] / 1e9:.2f} GB on disk -> {'PASS' if c['pass'] else 'FAIL'}")
    first = records[0] if records else {}
    lines.append("")
    lines.append(f"Streaming Wanda 50 %, random bf16 weights N(0, {STD}), {first.get('samples')} x "
                 f"{first.get('seqlen')} random calibration tokens, device {first.get('device')}, torch "
                 f"{first.get('torch')}, OMP_NUM_THREADS={first.get('omp_num_threads')}, {first.get('cores')} "
                 "cores; one process per row. Peak RSS is the process maximum (ru_maxrss, Python + torch included: "
                 "see 'RSS before prune'); the RssAnon / RssFile split and the per-block peaks are sampled every "
                 f"{first.get('sample_interval_s')} s (file pages are the mmap-ed safetensors weights).")
    return "\n".join(lines) + "\n"


def write_results(records: list[dict], results_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = results_dir / f"{name}.json", results_dir / f"{name}.md"
    json_path.write_text(json.dumps({"records": records, "acceptance": acceptance(records) if records else {}},
                                    indent=2) + "\n")
    md_path.write_text(markdown(records))
    return json_path, md_path


def run_benchmark(shapes: list[str], depths: list[int], samples: int, seqlen: int, name: str,
                  results_dir: str | os.PathLike = RESULTS_DIR, cache_dir=None, update: bool = False,
                  device: str | None = None, batch_size: int = 1, keep_outputs: bool = False,
                  interval: float = 0.02, log=print) -> dict:
    results_path = Path(results_dir) / f"{name}.json"
    records: list[dict] = []
    if update and results_path.is_file():
        records = json.loads(results_path.read_text())["records"]
    for shape in shapes:
        for depth in depths:
            record = run_case(shape, depth, samples, seqlen, cache_dir, device, batch_size, keep_outputs, interval, log)
            records = [r for r in records if (r["shape"], r["depth"]) != (shape, depth)] + [record]
            log(f"{shape:11s} L{depth}: peak RSS {record['peak_rss_mb']:.0f} MB "
                f"(anon {record['peak_rss_anon_mb']:.0f}, file {record['peak_rss_file_mb']:.0f}), "
                f"{_mean(record['block_seconds']):.2f} s/block, "
                f"{record['total_seconds']:.1f} s, complete={record['output']['complete']}")
            write_results(records, results_dir, name)
    checks = acceptance(records)
    for line in markdown(records).splitlines():
        if line.startswith("- ("):
            log(line)
    return {"records": records, "acceptance": checks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (seconds); results to streaming_memory_tiny")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES))
    parser.add_argument("--depths", nargs="+", type=int)
    parser.add_argument("--samples", type=int, help="calibration windows (default 4)")
    parser.add_argument("--seqlen", type=int, help="tokens per window (default 128; tiny 32)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default=None, help="SIPruner(device=...): default cuda if available, else cpu")
    parser.add_argument("--name", help="results file stem under --results-dir")
    parser.add_argument("--results-dir", default=RESULTS_DIR)
    parser.add_argument("--cache-dir", default=None, help="default: tests.assets.default_cache_dir()")
    parser.add_argument("--update", action="store_true", help="replace matching (shape, depth) rows of the results")
    parser.add_argument("--keep-outputs", action="store_true", help="do not delete the pruned folders")
    parser.add_argument("--build-only", action="store_true", help="only build the checkpoints")
    parser.add_argument("--interval", type=float, default=0.02, help="RSS sampling period in seconds")
    parser.add_argument("--one", nargs=2, metavar=("CHECKPOINT", "SAVE_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    defaults = TINY if args.tiny else FULL
    samples = args.samples or defaults["samples"]
    seqlen = args.seqlen or defaults["seqlen"]
    if args.one:
        record = measure(args.one[0], args.one[1], samples, seqlen, args.device, args.batch_size, args.interval)
        print(json.dumps(record))
        return
    shapes, depths = args.shapes or defaults["shapes"], sorted(args.depths or defaults["depths"])
    if args.build_only:
        for shape in shapes:
            for depth in depths:
                print(build_checkpoint(shape, depth, args.cache_dir))
        return
    run_benchmark(shapes, depths, samples, seqlen, args.name or defaults["name"], args.results_dir, args.cache_dir,
                  args.update, args.device, args.batch_size, args.keep_outputs, args.interval)


if __name__ == "__main__":
    main()
