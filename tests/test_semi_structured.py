import pytest
import torch

from optimum_si import SIPruner
from optimum_si.semi_structured import to_semi_structured
from tests.conftest import tiny_model


def test_dense_model_is_rejected_with_the_fix():
    with pytest.raises(ValueError, match="mask_structure='2:4'"):
        to_semi_structured(tiny_model("llama"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_cpu_refuses_clearly():
    model = tiny_model("llama")
    SIPruner(method="magnitude", mask_structure="2:4", show_progress=False).prune(model)
    with pytest.raises(RuntimeError, match="NVIDIA GPU"):
        to_semi_structured(model)
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        to_semi_structured(model, modules=["lm_head"])
