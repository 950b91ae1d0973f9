"""The reconstruction of the kept weights: the mask never moves and the sparsity stays exact, the held-out verdict is
respected (a refit that does not help leaves the block bit for bit as it was), the held-out windows are never trained
on, the closed form is the least-squares optimum of each row, and streamed, offloaded and in-memory runs agree."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from optimum_si import ReconstructionConfig, SIConfig, SIPruner
from optimum_si.reconstruction.closed_form import least_squares_on_support
from tests.conftest import stream_and_prune_in_memory, tiny_model, token_ids
from tests.test_golden import weights_digest

BLOCK = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
         "mlp.up_proj", "mlp.down_proj"]


def _pruner(reconstruction=True, **kwargs):
    return SIPruner(num_samples=8, seqlen=32, show_progress=False, reconstruction=reconstruction, **kwargs)


def _zeros(model):
    return {f"{i}.{name}": layer.get_submodule(name).weight == 0
            for i, layer in enumerate(model.model.layers) for name in BLOCK}


@pytest.mark.parametrize("mode", ["gradient", "closed-form"])
@pytest.mark.parametrize("recipe", [dict(method="wanda"), dict(method="sparsegpt", mask_structure="2:4"),
                                    dict(method="magnitude", sparsity=0.7), dict(method="wanda", induction=True)],
                         ids=["wanda", "sparsegpt-2:4", "magnitude-70", "si-wanda"])
def test_the_mask_is_held_fixed_and_the_kept_weights_move(mode, recipe):
    plain, refit = tiny_model("llama"), tiny_model("llama")
    reference = _pruner(False, **recipe)
    reference.prune(plain, dataset=token_ids())
    pruner = _pruner({"mode": mode, "validation_fraction": 0.0, "epochs": 8}, **recipe)
    pruner.prune(refit, dataset=token_ids())
    before, after = _zeros(plain), _zeros(refit)
    # Block 0 sees the same inputs in both runs: its mask is the base method's own (later blocks see other inputs).
    for name in BLOCK:
        assert torch.equal(before[f"0.{name}"], after[f"0.{name}"]), name
    assert pruner.report.sparsity == reference.report.sparsity  # exact counts: int(numel * s) per row or matrix
    assert {n: r.zeros for n, r in pruner.report.layers.items()} == {n: r.zeros for n, r in reference.report.layers.items()}
    records = [b.reconstruction for b in pruner.report.blocks]
    assert all(r is not None and r.mode == mode for r in records) and any(r.kept for r in records)
    q_plain = plain.model.layers[0].self_attn.q_proj.weight
    q_refit = refit.model.layers[0].self_attn.q_proj.weight
    kept = q_plain != 0
    if records[0].kept:
        assert not torch.equal(q_plain[kept], q_refit[kept])  # the kept weights were refit
        assert records[0].loss_after < records[0].loss_before
    assert not torch.signbit(q_refit[~kept]).any()  # pruned weights stay exact +0.0


def test_the_damped_optimiser_trains_the_kept_weights_and_holds_the_mask(monkeypatch):
    from optimum_si.optim import DampedAdam

    steps = []
    original = DampedAdam.step
    monkeypatch.setattr(DampedAdam, "step", lambda self, closure=None: steps.append(1) or original(self, closure))
    plain, refit = tiny_model("llama"), tiny_model("llama")
    _pruner(False, method="wanda").prune(plain, dataset=token_ids())
    pruner = _pruner({"optimizer": "damped-adam", "validation_fraction": 0.0, "epochs": 4}, method="wanda")
    pruner.prune(refit, dataset=token_ids())
    assert steps  # the refit's steps went through DampedAdam, not Adam
    kept = plain.model.layers[0].self_attn.q_proj.weight != 0
    assert torch.equal(kept, refit.model.layers[0].self_attn.q_proj.weight != 0)
    records = [b.reconstruction for b in pruner.report.blocks]
    if records[0].kept:
        assert not torch.equal(plain.model.layers[0].self_attn.q_proj.weight[kept],
                               refit.model.layers[0].self_attn.q_proj.weight[kept])


def test_relative_drift_is_the_mean_of_each_matrix_squared_relative_change():
    from optimum_si.reconstruction.gradient import relative_drift

    starts = [torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
    moved = [torch.tensor([[3.0, 5.0]]), torch.tensor([[1.0, 0.0], [0.0, 3.0]])]
    # (1 / 25 + 4 / 2) / 2
    assert relative_drift(moved, starts).item() == pytest.approx((1 / 25 + 4 / 2) / 2)
    assert relative_drift(starts, starts).item() == 0.0


def test_the_proximal_pull_keeps_the_refit_nearer_its_start_and_holds_the_mask():
    start, loose, pulled = tiny_model("llama"), tiny_model("llama"), tiny_model("llama")
    _pruner(False, method="wanda").prune(start, dataset=token_ids())
    refit = {"validation_fraction": 0.0, "epochs": 8}
    loose_pruner = _pruner(refit, method="wanda")
    loose_pruner.prune(loose, dataset=token_ids())
    pulled_pruner = _pruner({**refit, "proximal": 1e3}, method="wanda")
    pulled_pruner.prune(pulled, dataset=token_ids())
    assert loose_pruner.report.blocks[0].reconstruction.kept and pulled_pruner.report.blocks[0].reconstruction.kept

    def drift(model):  # block 0 sees the same inputs and mask in all three runs
        layer, first = model.model.layers[0], start.model.layers[0]
        return sum(float((layer.get_submodule(n).weight - first.get_submodule(n).weight).detach().square().sum())
                   for n in BLOCK)

    assert 0 < drift(pulled) < 0.1 * drift(loose)
    assert torch.equal(_zeros(start)["0.mlp.down_proj"], _zeros(pulled)["0.mlp.down_proj"])
    assert pulled_pruner.report.sparsity == loose_pruner.report.sparsity


def _refit_one_linear(weight, inputs, targets, step_scale, lr_schedule="constant"):
    from optimum_si.reconstruction.gradient import train_kept_weights

    block = torch.nn.Sequential(torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    block[0].weight.data.copy_(weight)
    config = ReconstructionConfig(lr=1e-2, epochs=5, step_scale=step_scale, lr_schedule=lr_schedule)
    wrappers, _steps, _seconds = train_kept_weights(
        block, {"0": block[0]}, [], config, inputs, {2: {}}, targets, list(range(len(inputs))), seed=0)
    return wrappers["0"].masked_weight().detach()


@pytest.mark.parametrize("step_scale", ["uniform", "column"])
def test_column_steps_refit_alike_in_any_basis_of_the_input_channels(step_scale):
    """W diag(s) on inputs / s is the same Linear (Sparsity Induction's folded scales are such an s). With
    step_scale='column' the refit in that basis is the refit in the first one, rescaled (s keeps the mean column
    RMS, the one factor the steps are normalised by); Adam's uniform steps are not."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 8, generator=generator) * (torch.rand(8, generator=generator) + 0.2)
    weight[:, 1::2] = 0.0  # half the weights pruned
    inputs = [torch.randn(2, 5, 8, generator=generator) for _ in range(4)]
    targets = [x @ torch.randn(6, 8, generator=generator).T for x in inputs]
    s = torch.rand(8, generator=generator) * 4 + 0.25
    rms = weight.square().mean(0).sqrt()
    live = rms > 0
    s = s * rms[live].mean() / (rms * s)[live].mean()
    first = _refit_one_linear(weight, inputs, targets, step_scale)
    rescaled = _refit_one_linear(weight * s, [x / s for x in inputs], targets, step_scale)
    assert torch.equal(first == 0, weight == 0) and torch.equal(rescaled == 0, weight == 0)  # the mask holds
    assert not torch.allclose(first, weight)
    same = torch.allclose(rescaled, first * s, rtol=1e-4, atol=1e-6)
    assert same == (step_scale == "column")


def test_cosine_schedule_steps_from_lr_down_to_near_zero(monkeypatch):
    """Each Adam step under lr_schedule='cosine' uses lr x (1 + cos(pi t / T)) / 2 for step t of T; 'constant' uses
    lr throughout."""
    import math

    seen: dict[str, list[float]] = {"constant": [], "cosine": []}
    current = ["constant"]
    step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        seen[current[0]].append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 8, generator=generator)
    weight[:, ::2] = 0.0
    inputs = [torch.randn(2, 5, 8, generator=generator) for _ in range(4)]
    targets = [x @ torch.randn(6, 8, generator=generator).T for x in inputs]
    refits = {}
    for schedule in ("constant", "cosine"):
        current[0] = schedule
        refits[schedule] = _refit_one_linear(weight, inputs, targets, "uniform", lr_schedule=schedule)
    total = 5 * 4
    assert seen["constant"] == [1e-2] * total
    assert seen["cosine"] == pytest.approx([1e-2 * (1 + math.cos(math.pi * t / total)) / 2 for t in range(total)])
    assert torch.equal(refits["cosine"] == 0, weight == 0)  # the mask holds
    assert not torch.equal(refits["cosine"], refits["constant"])


def test_column_steps_hold_the_mask_through_a_whole_run_with_si_and_the_retry():
    plain, refit, uniform = tiny_model("llama"), tiny_model("llama"), tiny_model("llama")
    recipe = dict(method="wanda", induction=True)
    _pruner(False, **recipe).prune(plain, dataset=token_ids())
    refit_recipe = {"validation_fraction": 0.0, "epochs": 8, "retry_lr": 1e-4}
    pruner = _pruner({**refit_recipe, "step_scale": "column"}, **recipe)
    pruner.prune(refit, dataset=token_ids())
    _pruner(refit_recipe, **recipe).prune(uniform, dataset=token_ids())
    # block 0 sees the same inputs, scales and mask in every run: only the steps differ
    assert not torch.equal(refit.model.layers[0].mlp.up_proj.weight, uniform.model.layers[0].mlp.up_proj.weight)
    assert all(torch.equal(_zeros(plain)[f"0.{n}"], _zeros(refit)[f"0.{n}"]) for n in BLOCK)
    first = pruner.report.blocks[0].reconstruction
    assert first.kept and first.loss_after < first.loss_before
    kept = plain.model.layers[0].mlp.up_proj.weight != 0
    assert not torch.equal(plain.model.layers[0].mlp.up_proj.weight[kept], refit.model.layers[0].mlp.up_proj.weight[kept])


def _spoil_refits(monkeypatch, spoiled=lambda config: True) -> list[float]:
    """Make every refit whose config `spoiled` picks harmful (its kept weights tripled after training); returns the
    list the learning rate of every refit is appended to."""
    import optimum_si.reconstruction.gradient as gradient

    original = gradient.train_kept_weights
    rates = []

    def train(block, modules, dense_params, config, *args, **kwargs):
        rates.append(config.lr)
        wrappers, steps, seconds = original(block, modules, dense_params, config, *args, **kwargs)
        if spoiled(config):
            with torch.no_grad():
                for wrapper in wrappers.values():
                    wrapper.weight.mul_(3.0)
        return wrappers, steps, seconds

    monkeypatch.setattr("optimum_si.reconstruction.stage.train_kept_weights", train)
    return rates


def test_a_refit_that_does_not_help_leaves_the_block_bit_for_bit(monkeypatch):
    """The verdict: a refit whose held-out loss is not lower is reverted, and the run equals the run without
    reconstruction bit for bit (the next block is fed the reverted block's outputs)."""
    _spoil_refits(monkeypatch)
    plain, refit = tiny_model("llama"), tiny_model("llama")
    _pruner(False, method="wanda").prune(plain, dataset=token_ids())
    pruner = _pruner(True, method="wanda")
    pruner.prune(refit, dataset=token_ids())
    assert not any(b.reconstruction.kept for b in pruner.report.blocks)
    assert all(b.reconstruction.loss_after > b.reconstruction.loss_before for b in pruner.report.blocks)
    assert weights_digest(refit) == weights_digest(plain)


@pytest.mark.parametrize("harmful_retry", [False, True])
def test_a_reverted_refit_is_retried_once_at_the_gentler_step(monkeypatch, harmful_retry, tmp_path):
    """With `retry_lr`, a block whose refit the verdict reverts is refit once more at that learning rate; a retry that
    does not help either leaves the run bit for bit as without reconstruction."""
    rates = _spoil_refits(monkeypatch, lambda config: config.lr == 1e-3 or harmful_retry)
    plain, refit = tiny_model("llama"), tiny_model("llama")
    _pruner(False, method="wanda").prune(plain, dataset=token_ids())
    pruner = _pruner({"retry_lr": 1e-4}, method="wanda")
    pruner.prune(refit, dataset=token_ids())
    records = [b.reconstruction for b in pruner.report.blocks]
    assert rates == [1e-3, 1e-4] * 2 and all(r.steps == 12 for r in records)  # 6 training windows, twice
    if harmful_retry:
        assert not any(r.kept for r in records) and all(r.lr is None for r in records)
        assert weights_digest(refit) == weights_digest(plain)
    else:
        assert all(r.kept and r.retried and r.lr == 1e-4 and r.loss_after < r.loss_before for r in records)
        assert weights_digest(refit) != weights_digest(plain)
        assert pruner.report.reconstruction_summary()["blocks_kept_at_retry"] == 2
        card = open(f"{pruner.save(refit, str(tmp_path / 'out'))}/README.md", encoding="utf-8").read()
        assert "2 of them refit a second time" in card and "| 1 | yes, at the retry step |" in card


def _record_refit_inputs(monkeypatch) -> list:
    """Each block's refit, in block order: its input windows (`hidden`), their keyword arguments (`kwargs`), its target
    outputs (`targets`) and the windows it trains on (`training`)."""
    import optimum_si.reconstruction.stage as stage

    calls = []
    original = stage.train_kept_weights

    def spy(block, modules, dense_params, config, hidden, kwargs, targets, training, seed, **extra):
        calls.append(SimpleNamespace(hidden=[h.clone() for h in hidden], kwargs=kwargs,
                                     targets=[t.clone() for t in targets], training=list(training)))
        return original(block, modules, dense_params, config, hidden, kwargs, targets, training, seed, **extra)

    monkeypatch.setattr(stage, "train_kept_weights", spy)
    return calls


def test_held_out_windows_are_never_trained_on(monkeypatch):
    calls = _record_refit_inputs(monkeypatch)
    pruner = _pruner({"validation_fraction": 0.25}, method="wanda")
    pruner.prune(tiny_model("llama"), dataset=token_ids())
    assert [call.training for call in calls] == [[1, 2, 3, 5, 6, 7]] * 2  # 8 windows, 0 and 4 held out; one pass by default
    assert all(b.reconstruction.validated and b.reconstruction.steps == 6 for b in pruner.report.blocks)


def test_closed_form_is_each_rows_least_squares_optimum_on_its_support():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 12, generator=generator, dtype=torch.float64)
    dense = torch.randn(5, 12, generator=generator)
    keep = torch.rand(5, 12, generator=generator) > 0.4
    keep[0] = False  # a row with nothing kept stays zero
    keep[1] = True  # a row with everything kept gets the dense row back
    refit = least_squares_on_support(dense, keep, x.T @ x, damping=1e-12)
    for row in range(5):
        support = keep[row]
        expected = torch.zeros(12, dtype=torch.float64)
        if support.any():
            expected[support] = torch.linalg.lstsq(x[:, support], x @ dense[row].double()).solution
        torch.testing.assert_close(refit[row].double(), expected, rtol=1e-5, atol=1e-6)
    assert bool((refit[~keep] == 0).all())


def test_the_global_target_is_the_dense_models_own_stream(monkeypatch):
    """With target='global', each block is refit to the dense model's own block outputs (block 0: the same as the
    local target, its inputs are the model's; block 1: the dense block 1 on the dense block 0's outputs, not on the
    pruned block 0's)."""
    from optimum_si.modeling.capture import block_output

    calls = _record_refit_inputs(monkeypatch)
    dense = tiny_model("llama")
    _pruner({"target": "global"}, method="wanda").prune(tiny_model("llama"), dataset=token_ids())
    block_0, block_1 = calls

    def layer(i, x):
        with torch.no_grad():
            return block_output(dense.model.layers[i](x, **block_0.kwargs[x.shape[0]]))

    dense_stream = [layer(0, x) for x in block_0.hidden]
    for x, y in zip(dense_stream, block_0.targets):
        torch.testing.assert_close(y, x)
    for x, x_pruned, y in zip(dense_stream, block_1.hidden, block_1.targets):
        torch.testing.assert_close(y, layer(1, x))
        assert not torch.allclose(y, layer(1, x_pruned))  # the local target would be this


@pytest.mark.parametrize("target", ["local", "global"])
def test_unrefit_mask_stream_keeps_every_mask_and_scale_of_the_run_without_refit(monkeypatch, target):
    """With mask_stream='unrefit' every block is pruned (and SI trained) on the stream of the blocks before their
    refit, so everything but the refit Linears' kept weights is the run without reconstruction's, bit for bit; each
    block is refit on the refit model's own stream (block 1: the refit block 0's outputs)."""
    from optimum_si.modeling.capture import block_output

    calls = _record_refit_inputs(monkeypatch)
    recipe = dict(method="wanda", induction=True)
    plain, refit = tiny_model("llama"), tiny_model("llama")
    _pruner(False, **recipe).prune(plain, dataset=token_ids())
    pruner = _pruner({"mask_stream": "unrefit", "target": target, "validation_fraction": 0.0, "epochs": 4}, **recipe)
    pruner.prune(refit, dataset=token_ids())
    masks, refit_masks = _zeros(plain), _zeros(refit)
    assert all(torch.equal(masks[name], refit_masks[name]) for name in masks)
    refit_weights = {f"model.layers.{i}.{name}.weight" for i in range(2) for name in BLOCK}
    expected = plain.state_dict()
    for key, value in refit.state_dict().items():
        if key not in refit_weights:
            assert torch.equal(value, expected[key]), key  # norms with SI's folded scales, embeddings, head
    assert all(b.reconstruction.kept for b in pruner.report.blocks)
    assert not torch.equal(plain.model.layers[1].mlp.down_proj.weight, refit.model.layers[1].mlp.down_proj.weight)
    block_0, block_1 = calls

    def layer(model, x):
        with torch.no_grad():
            return block_output(model.model.layers[0](x, **block_0.kwargs[x.shape[0]]))

    expected_1 = [layer(refit, x) for x in block_0.hidden]
    unrefit_1 = [layer(plain, x) for x in block_0.hidden]
    for x, y, z in zip(block_1.hidden, expected_1, unrefit_1):
        torch.testing.assert_close(x, y)
        assert not torch.allclose(x, z)  # the walk's own stream (the unrefit block 0) would be this


def test_unrefit_mask_stream_reports_the_output_error_of_each_block_as_written(monkeypatch):
    """The report's per-block output error reads the refit block on the refit model's stream (the stream the written
    model runs), not the block before its refit that the walk's own stream carries."""
    from optimum_si.modeling.capture import block_output
    from optimum_si.observers.output_error import probe_windows, relative_error

    calls = _record_refit_inputs(monkeypatch)
    refit = tiny_model("llama")
    pruner = _pruner({"mask_stream": "unrefit", "validation_fraction": 0.0, "epochs": 4}, method="wanda")
    pruner.prune(refit, dataset=token_ids())
    assert all(b.reconstruction.kept for b in pruner.report.blocks)
    for index, call in enumerate(calls):  # local target: each call's targets are the dense block on its inputs
        windows = probe_windows(len(call.hidden))
        with torch.no_grad():
            written = [block_output(refit.model.layers[index](call.hidden[i], **call.kwargs[call.hidden[i].shape[0]]))
                       for i in windows]
        expected = relative_error(written, [call.targets[i] for i in windows])
        assert pruner.report.blocks[index].output_error == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("refit", [{"mode": "gradient"}, {"mode": "closed-form"}, {"target": "global"},
                                   {"target": "global", "mask_stream": "unrefit"}],
                         ids=["gradient", "closed-form", "global", "global-unrefit"])
def test_streamed_equals_in_memory_bit_for_bit(refit, tmp_path):
    stream_and_prune_in_memory(tiny_model("llama"), lambda: _pruner(refit, method="wanda", induction=True),
                               tmp_path, token_ids())


def test_offloaded_equals_plain():
    from accelerate import cpu_offload

    from optimum_si.modeling.offload import offloaded_state_dict

    plain, offloaded = tiny_model("llama"), cpu_offload(tiny_model("llama"), execution_device="cpu")
    _pruner(True, method="sparsegpt").prune(plain, dataset=token_ids())
    _pruner(True, method="sparsegpt").prune(offloaded, dataset=token_ids())
    expected = plain.state_dict()
    assert all(torch.equal(t, expected[k]) for k, t in offloaded_state_dict(offloaded).items())


def test_training_the_norms_too_is_kept_or_reverted_with_the_weights():
    plain, refit = tiny_model("llama"), tiny_model("llama")
    _pruner(False, method="wanda").prune(plain, dataset=token_ids())
    pruner = _pruner({"train_norms": True, "validation_fraction": 0.0}, method="wanda")
    pruner.prune(refit, dataset=token_ids())
    for i, record in enumerate(pruner.report.blocks):
        norm_plain = plain.model.layers[i].input_layernorm.weight
        norm_refit = refit.model.layers[i].input_layernorm.weight
        assert torch.equal(norm_plain, norm_refit) != record.reconstruction.kept


def test_bfloat16_training_keeps_float32_weights_and_the_mask():
    model = tiny_model("llama")
    pruner = _pruner({"precision": "bfloat16", "validation_fraction": 0.0}, method="wanda")
    pruner.prune(model, dataset=token_ids())
    assert pruner.report.sparsity == 0.5 and all(p.dtype == torch.float32 for p in model.parameters())


def test_the_report_and_the_card_say_per_block_whether_it_helped(tmp_path):
    model = tiny_model("llama")
    pruner = _pruner(True, method="wanda")
    pruner.prune(model, dataset=token_ids())
    summary = pruner.report.reconstruction_summary()
    assert summary["blocks"] == 2 and summary["validated"] and len(summary["per_block"]) == 2
    out = pruner.save(model, str(tmp_path / "out"))
    card = open(f"{out}/README.md", encoding="utf-8").read()
    assert "## Reconstruction of the kept weights" in card and "held-out calibration windows" in card
    saved = SIPruner.from_pretrained(out).config
    assert saved.reconstruction == ReconstructionConfig()


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "exact"}, "ReconstructionConfig.mode must be one of"),
    ({"epochs": 0}, "ReconstructionConfig.epochs must be a positive integer"),
    ({"lr": -1}, "ReconstructionConfig.lr must be a positive number"),
    ({"validation_fraction": 0.9}, r"ReconstructionConfig.validation_fraction must be a number in \[0, 0.5\]"),
    ({"target": "dense"}, "ReconstructionConfig.target must be one of 'local', 'global'"),
    ({"retry_lr": 0}, "ReconstructionConfig.retry_lr must be a positive number or None"),
    ({"optimizer": "sgd"}, "ReconstructionConfig.optimizer must be one of 'adam', 'damped-adam'"),
    ({"target": "global", "mode": "closed-form"}, "target='global' needs mode='gradient'"),
    ({"proximal": -1}, "ReconstructionConfig.proximal must be"),
    ({"proximal": 1.0, "mode": "closed-form"}, "proximal needs mode='gradient'"),
    ({"mask_stream": "dense"}, "ReconstructionConfig.mask_stream must be one of 'refit', 'unrefit'"),
    ({"step_scale": "row"}, "ReconstructionConfig.step_scale must be one of 'uniform', 'column'"),
    ({"step_scale": "column", "mode": "closed-form"}, "step_scale='column' needs mode='gradient'"),
    ({"lr_schedule": "linear"}, "ReconstructionConfig.lr_schedule must be one of 'constant', 'cosine'"),
    ({"lr_schedule": "cosine", "mode": "closed-form"}, "lr_schedule='cosine' needs mode='gradient'"),
    ({"mask_stream": "unrefit", "mode": "closed-form"}, "mask_stream='unrefit' needs mode='gradient'"),
])
def test_invalid_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SIConfig(reconstruction=kwargs)


def test_reconstruction_needs_whole_blocks():
    with pytest.raises(ValueError, match="reconstruction=True trains each whole block"):
        SIConfig(reconstruction=True, true_sequential=True)
    assert SIConfig(method="magnitude", reconstruction=True).needs_calibration
