import logging

import pytest
import torch

from optimum_si.methods.masks import follows_nm
from optimum_si.methods.sparsegpt.solver import inverse_hessian_factor, sparsegpt_prune


def _hessian(x: torch.Tensor) -> torch.Tensor:
    return 2.0 / x.shape[0] * x.T @ x


def test_identity_hessian_is_blockwise_magnitude_without_updates():
    weight = torch.tensor([[1.0, -4.0, 2.0, 3.0], [0.5, 5.0, -1.0, 6.0]])
    result = sparsegpt_prune(weight, inverse_hessian_factor(torch.eye(4), 0.01), 0.5)
    assert result.weight.tolist() == [[0.0, -4.0, 0.0, 3.0], [0.0, 5.0, 0.0, 6.0]]
    assert result.keep_mask.sum().item() == 4


def test_obs_update_reduces_reconstruction_error_of_its_mask():
    torch.manual_seed(0)
    mixing = torch.randn(32, 32)
    x = torch.randn(512, 32) @ mixing  # strongly correlated inputs: compensation matters
    weight = torch.randn(16, 32)
    result = sparsegpt_prune(weight, inverse_hessian_factor(_hessian(x), 0.01), 0.5)
    masked_only = weight * result.keep_mask
    err_masked = ((weight - masked_only) @ x.T).square().sum()
    err_obs = ((weight - result.weight) @ x.T).square().sum()
    assert err_obs < 0.9 * err_masked  # 1.0 would mean no compensation at all
    assert (result.weight == 0).sum().item() == 16 * 32 // 2


def test_lazy_blocks_do_not_change_nm_result():
    torch.manual_seed(1)
    x = torch.randn(256, 64) @ torch.randn(64, 64)
    weight = torch.randn(8, 64)
    factor = inverse_hessian_factor(_hessian(x), 0.01)
    small = sparsegpt_prune(weight, factor, 0.5, n_m=(2, 4), block_size=4)
    large = sparsegpt_prune(weight, factor, 0.5, n_m=(2, 4), block_size=64)
    assert torch.equal(small.keep_mask, large.keep_mask)
    torch.testing.assert_close(small.weight, large.weight, rtol=1e-4, atol=1e-5)
    assert follows_nm(large.weight, 2, 4)


def test_input_scaling_invariance_without_damping():
    # pruning-reference.md §2: H' = S^-1 H S^-1 gives the same mask and the same function once S is undone.
    torch.manual_seed(2)
    x = torch.randn(400, 16) @ torch.randn(16, 16)
    weight = torch.randn(6, 16)
    s = torch.rand(16) * 4 + 0.25
    base = sparsegpt_prune(weight, inverse_hessian_factor(_hessian(x), 1e-9), 0.5, block_size=8)
    scaled = sparsegpt_prune(weight * s, inverse_hessian_factor(_hessian(x / s), 1e-9), 0.5, block_size=8)
    assert torch.equal(base.keep_mask, scaled.keep_mask)
    torch.testing.assert_close(scaled.weight / s, base.weight, rtol=1e-3, atol=1e-4)


def test_dead_inputs_are_zeroed():
    x = torch.randn(100, 8)
    x[:, 3] = 0
    result = sparsegpt_prune(torch.randn(4, 8), inverse_hessian_factor(_hessian(x), 0.01), 0.25)
    assert (result.weight[:, 3] == 0).all()


def test_failed_cholesky_warns_and_names_the_knob(caplog):
    bad = -torch.eye(4)
    with caplog.at_level(logging.WARNING, logger="optimum_si.methods.sparsegpt.solver"):
        result = sparsegpt_prune(torch.randn(3, 4), inverse_hessian_factor(bad, 0.01), 0.5)
    assert "dampening_frac" in caplog.text
    assert torch.isfinite(result.weight).all()
    assert (result.weight == 0).sum().item() == 6


def test_stacking_matrices_that_share_a_hessian_equals_separate_runs():
    torch.manual_seed(3)
    x = torch.randn(300, 32) @ torch.randn(32, 32)
    factor = inverse_hessian_factor(_hessian(x), 0.01)
    q, k = torch.randn(12, 32), torch.randn(4, 32)
    for n_m in (None, (2, 4)):
        stacked = sparsegpt_prune(torch.cat([q, k]), factor, 0.5, n_m, block_size=8, segments=[12, 4])
        alone = [sparsegpt_prune(w, factor, 0.5, n_m, block_size=8) for w in (q, k)]
        torch.testing.assert_close(stacked.weight, torch.cat([a.weight for a in alone]))
        assert torch.equal(stacked.keep_mask, torch.cat([a.keep_mask for a in alone]))
        assert stacked.segment_losses == pytest.approx([a.loss for a in alone])
