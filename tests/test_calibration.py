import pytest
import torch

from optimum_si.calibration import build_calibration_ids, draw_windows


class CharTokenizer:
    """One token per character: enough to test windowing without a real tokenizer."""

    def __call__(self, text, verbose=True):
        return {"input_ids": [ord(c) % 100 for c in text]}


TEXT = "calibration text " * 200


def build(dataset, tokenizer=CharTokenizer(), n=4, seqlen=16, seed=0):
    return build_calibration_ids(dataset, tokenizer, n, seqlen, seed, vocab_size=128, max_context=64)


def test_windows_follow_the_reference_seeding():
    import random

    stream = torch.arange(1000)
    windows = draw_windows(stream, 3, 10, seed=0)
    rng = random.Random(0)
    starts = [rng.randint(0, 1000 - 10 - 1) for _ in range(3)]
    assert windows[:, 0].tolist() == starts
    assert torch.equal(windows[1], torch.arange(starts[1], starts[1] + 10))


def test_accepted_forms_agree(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(TEXT)
    from_list = build([TEXT])
    assert from_list.shape == (4, 16)
    assert torch.equal(build(str(path)), from_list)
    tokens = CharTokenizer()(TEXT)["input_ids"]
    assert torch.equal(build([{"input_ids": tokens}], tokenizer=None), from_list)
    given = torch.randint(0, 128, (3, 8))
    assert torch.equal(build(given, tokenizer=None), given)


def test_datasets_dataset():
    datasets = pytest.importorskip("datasets")
    data = datasets.Dataset.from_dict({"text": [TEXT], "id": [1]})
    assert torch.equal(build(data), build([TEXT]))


@pytest.mark.parametrize(
    "dataset, tokenizer, message",
    [
        (["too short"], CharTokenizer(), "too little"),
        ([TEXT], None, "a tokenizer is needed"),
        (torch.rand(4, 16), None, "integer token ids"),
        (torch.zeros(16, dtype=torch.long), None, r"shape \[num_samples, seqlen\]"),
        (torch.full((2, 8), 500), None, r"must lie in \[0, 128\)"),
        ("/no/such/file.txt", CharTokenizer(), "not an existing text file"),
        (None, CharTokenizer(), "needs calibration data"),
        (42, CharTokenizer(), "Unsupported dataset"),
    ],
)
def test_bad_calibration_data(dataset, tokenizer, message):
    with pytest.raises(ValueError, match=message):
        build(dataset, tokenizer=tokenizer)


def test_windows_longer_than_context():
    with pytest.raises(ValueError, match="longer than the model's context"):
        build([TEXT], seqlen=100)
    with pytest.raises(ValueError, match="longer than the model's context"):
        build(torch.zeros(2, 100, dtype=torch.long), tokenizer=None)
