"""The memory model of docs/memory.md and the FLOP scaling that carries a measured block to a larger model.

Pure arithmetic on a Llama block's shape: hidden size `h`, MLP size `m`, K/V width `kv`, calibration window `L`,
source dtype bytes `b`. Every figure is in bytes or seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BlockShape:
    """One Llama decoder block as the memory model sees it, and the parts of the model outside the blocks."""

    hidden: int
    intermediate: int
    kv_width: int  # KV heads x head dim
    vocab: int
    blocks: int

    @property
    def params(self) -> int:
        """`P = 2h^2 + 2h*kv + 3hm` (q and o; k and v; gate, up and down)."""
        h, m, kv = self.hidden, self.intermediate, self.kv_width
        return 2 * h * h + 2 * h * kv + 3 * h * m

    @property
    def largest_linear(self) -> int:
        """`mh`: gate, up and down all hold m x h weights."""
        return self.hidden * self.intermediate

    def as_dict(self) -> dict:
        return {**asdict(self), "params_per_block": self.params}


def shape_of(config: dict) -> BlockShape:
    """A `BlockShape` from a transformers Llama config (as a dict: config.json)."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return BlockShape(hidden=config["hidden_size"], intermediate=config["intermediate_size"],
                      kv_width=config.get("num_key_value_heads", heads) * head_dim, vocab=config["vocab_size"],
                      blocks=config["num_hidden_layers"])


LLAMA3_8B = BlockShape(hidden=4096, intermediate=14336, kv_width=1024, vocab=128256, blocks=32)
LLAMA3_70B = BlockShape(hidden=8192, intermediate=28672, kv_width=1024, vocab=128256, blocks=80)

# The runs the memory model has a formula for (docs/memory.md, "Peaks per block").
MEMORY_FORMULAS = {
    "wanda": "b P + 11 mh",
    "sparsegpt": "b P + 5 (P - mh) + 24 h^2 + 28 m^2",
    "si-wanda": "b P + 13 P + 22 mh + 4 L (10 h + 3 m)",
}


def block_peak_bytes(run: str, shape: BlockShape, seqlen: int, dtype_bytes: int = 2) -> int:
    """The memory model's peak of one block where it runs, activations aside (docs/memory.md, written there for
    b = 2: `2P` is the block itself; SI adds its fp32 copies (12 P) and masks (P))."""
    p, mh, h, m = shape.params, shape.largest_linear, shape.hidden, shape.intermediate
    if run == "wanda":
        return dtype_bytes * p + 11 * mh
    if run == "sparsegpt":
        return dtype_bytes * p + 5 * (p - mh) + 24 * h * h + 28 * m * m
    if run == "si-wanda":
        return dtype_bytes * p + 13 * p + 22 * mh + 4 * seqlen * (10 * h + 3 * m)
    raise ValueError(f"no memory formula for {run!r}; docs/memory.md has {', '.join(MEMORY_FORMULAS)}.")


def device_activation_bytes(shape: BlockShape, seqlen: int, batch_size: int = 1, dtype_bytes: int = 2) -> int:
    """One batch in and out on the device (`2 B L h b`), with activations kept in host memory (the default)."""
    return 2 * batch_size * seqlen * shape.hidden * dtype_bytes


def forward_flops_per_token(shape: BlockShape, seqlen: int) -> int:
    """Multiply-adds x 2 of one block per token: the Linears (2P) and causal attention (QK^T and AV over on average
    half the window: 2 L h)."""
    return 2 * shape.params + 2 * seqlen * shape.hidden


def _hessian_jobs(shape: BlockShape) -> list[tuple[int, int]]:
    """(rows, input width) of each Hessian a Llama block's solve shares (docs/distributed.md: q/k/v, o, gate/up,
    down)."""
    h, m, kv = shape.hidden, shape.intermediate, shape.kv_width
    return [(h + 2 * kv, h), (h, h), (2 * m, h), (h, m)]


def solve_cost(shape: BlockShape) -> int:
    """SparseGPT's solve cost of one block, `sum over jobs of rows x d^2 + d^3` (the OBS updates and the
    factorisation; the cost model of the owner split)."""
    return sum(rows * d * d + d ** 3 for rows, d in _hessian_jobs(shape))


@dataclass(frozen=True)
class ScaleFactors:
    """How each part of a measured block's seconds grows from one shape to another."""

    forward: float  # statistics, propagation, SI's training and probes: forward FLOPs per token
    mask: float  # Wanda's scoring and selection: the number of weights
    solve: float  # SparseGPT's prune phase: the solve cost
    outside: float  # capture and writing the non-block tensors: the embedding size V h

    def as_dict(self) -> dict:
        return asdict(self)


def scale_factors(source: BlockShape, target: BlockShape, seqlen: int) -> ScaleFactors:
    return ScaleFactors(
        forward=forward_flops_per_token(target, seqlen) / forward_flops_per_token(source, seqlen),
        mask=target.params / source.params,
        solve=solve_cost(target) / solve_cost(source),
        outside=(target.vocab * target.hidden) / (source.vocab * source.hidden),
    )


def project_block_seconds(block: dict, factors: ScaleFactors, solves: bool) -> float:
    """One block's seconds carried to another shape: its prune phase by the solve cost (Hessian methods) or by the
    weight count (mask methods), everything else (statistics, propagation, SI, loading and writing) by the forward
    FLOPs. `block` has `seconds`, `stats_s`, `prune_s` and `propagate_s`."""
    prune = block["prune_s"]
    rest = max(block["seconds"] - prune, 0.0)
    return rest * factors.forward + prune * (factors.solve if solves else factors.mask)


def project_run(blocks: list[dict], outside_s: float, source: BlockShape, target: BlockShape, seqlen: int,
                solves: bool) -> dict:
    """The whole run of `target` from the measured blocks of `source`: the mean of the steady blocks (all but the
    first when there are several: it pays for the first kernels' warm-up) times the target's block count, plus the
    time outside the blocks (set-up, capture, writing the embeddings and the head) scaled by the embedding size."""
    steady = blocks[1:] if len(blocks) > 1 else blocks
    if not steady:
        raise ValueError("no measured block to project from")
    factors = scale_factors(source, target, seqlen)
    per_block = sum(project_block_seconds(b, factors, solves) for b in steady) / len(steady)
    outside = outside_s * factors.outside
    return {"blocks": target.blocks, "seconds_per_block": per_block, "outside_blocks_s": outside,
            "total_s": per_block * target.blocks + outside, "factors": factors.as_dict()}
