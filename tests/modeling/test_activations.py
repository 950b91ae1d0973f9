import os

import pytest
import torch

from optimum_si import SIConfig, SIPruner
from optimum_si.modeling.activations import ActivationStore, resolve_storage
from tests.conftest import tiny_model, token_ids


@pytest.mark.parametrize("storage", ["device", "cpu", "disk"])
def test_store_round_trip(storage, tmp_path):
    store = ActivationStore(storage, torch.device("cpu"), str(tmp_path))
    tensors = [torch.randn(1, 5, 3), torch.randn(2, 5, 3)]
    for tensor in tensors:
        store.append(tensor)
    assert len(store) == 2 and store.shapes == [t.shape for t in tensors]
    for got, expected in zip(store, tensors):
        assert torch.equal(got, expected)
    assert len(os.listdir(tmp_path)) == (2 if storage == "disk" else 0)
    tensors[0].add_(1.0)  # the store holds its own copy, not a view of the caller's tensor
    assert not torch.equal(store[0], tensors[0]) or storage == "device"
    store.clear()
    assert len(store) == 0 and os.listdir(tmp_path) == []


def test_disk_files_are_removed_when_the_store_is_dropped(tmp_path):
    store = ActivationStore("disk", torch.device("cpu"), str(tmp_path))
    store.append(torch.ones(2, 2))
    assert os.listdir(tmp_path)
    del store
    assert os.listdir(tmp_path) == []


def test_auto_storage_keeps_cpu_runs_on_the_device():
    assert resolve_storage("auto", torch.device("cpu")) == "device"
    assert resolve_storage("auto", torch.device("cuda")) == "cpu"
    assert resolve_storage("disk", torch.device("cpu")) == "disk"


@pytest.mark.parametrize("induction", [False, True])
def test_disk_and_cpu_activations_prune_identically(induction, tmp_path):
    kwargs = dict(method="wanda", induction=induction, num_samples=8, seqlen=32, show_progress=False)
    models = {}
    for storage in ("device", "cpu", "disk"):
        model = tiny_model("llama")
        SIPruner(activation_storage=storage, activation_dir=str(tmp_path), **kwargs).prune(model, dataset=token_ids())
        models[storage] = model.state_dict()
    for storage in ("cpu", "disk"):
        for key, value in models["device"].items():
            assert torch.equal(value, models[storage][key]), (storage, key)
    assert os.listdir(tmp_path) == []  # every activation file is gone once the run is over


@pytest.mark.parametrize("kwargs", [{"activation_storage": "gpu"}, {"activation_dir": ""}])
def test_invalid_activation_settings(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SIConfig(**kwargs)
