import torch
from torch import nn

from optimum_si.observers.stats import InputStatsCollector
from tests.conftest import tiny_model, token_ids


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(4, 2), nn.Linear(3, 2)

    def forward(self, x):
        return self.c(self.a(x)) + self.b(x)


def test_shared_input_shares_one_statistic_and_values_are_exact():
    torch.manual_seed(0)
    module = TwoHeads()
    xs = [torch.randn(5, 4), torch.randn(7, 4)]
    with InputStatsCollector({"a": module.a, "b": module.b, "c": module.c}, with_hessian=True,
                             stop_when_done=False) as collector:
        for x in xs:
            module(x)
            collector.end_pass()
    stats = collector.stats
    assert stats["a"] is stats["b"] and stats["c"] is not stats["a"]
    x = torch.cat(xs)
    torch.testing.assert_close(stats["a"].sq_norms, x.square().sum(0))
    torch.testing.assert_close(stats["a"].hessian, 2 / 12 * x.T @ x)
    assert stats["a"].tokens == 12


def test_llama_qkv_and_gate_up_share_statistics():
    model = tiny_model("llama")
    block = model.model.layers[0]
    linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)}
    with InputStatsCollector(linears, with_hessian=False, stop_when_done=False) as collector, torch.no_grad():
        model(token_ids(2, 16))
    stats = collector.stats
    assert stats["self_attn.q_proj"] is stats["self_attn.k_proj"] is stats["self_attn.v_proj"]
    assert stats["mlp.gate_proj"] is stats["mlp.up_proj"]
    assert len({id(s) for s in stats.values()}) == 4
