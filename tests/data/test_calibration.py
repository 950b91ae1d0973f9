import pytest
import torch

from optimum_si.data.calibration import build_calibration_ids, draw_windows


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


@pytest.mark.parametrize("dataset", [[], (), {}], ids=["list", "tuple", "dict"])
def test_empty_dataset_says_empty(dataset):
    with pytest.raises(ValueError, match="calibration dataset is an empty"):
        build(dataset)


def test_empty_datasets_dataset_says_empty():
    datasets = pytest.importorskip("datasets")
    with pytest.raises(ValueError, match="calibration dataset is an empty Dataset"):
        build(datasets.Dataset.from_dict({"text": []}))


def test_mixed_list_names_what_it_holds():
    with pytest.raises(ValueError, match="only strings or only .* holds int, str"):
        build(["text", 3])


def test_non_utf8_file_names_the_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    with pytest.raises(ValueError, match=r"latin1\.txt' is not UTF-8 text.*iconv"):
        build(str(path))


def test_windows_larger_than_memory_are_refused_before_drawing(monkeypatch):
    import optimum_si.data.windows as windows

    monkeypatch.setattr(windows, "_available_memory", lambda: 1 << 20)
    with pytest.raises(ValueError, match="more than the 0.0 GiB of memory available; lower num_samples or seqlen"):
        build_calibration_ids([TEXT], CharTokenizer(), 10**6, 16, 0, vocab_size=128, max_context=64)


def test_many_short_windows_are_one_gather():
    stream = torch.arange(50)
    windows = draw_windows(stream, 20000, 3, seed=1)
    assert windows.shape == (20000, 3) and windows.is_contiguous()
    assert torch.equal(windows[:, 1] - windows[:, 0], torch.ones(20000, dtype=torch.long))


def test_bad_tokenised_samples_and_dataset_rows_are_named():
    with pytest.raises(ValueError, match="input_ids of calibration sample 1 is not a list"):
        build([{"input_ids": [1, 2, 3]}, {"input_ids": "abc"}], tokenizer=None)
    datasets = pytest.importorskip("datasets")
    with pytest.raises(ValueError, match="Row 1 of the dataset's 'text' column is NoneType"):
        build(datasets.Dataset.from_dict({"text": [TEXT, None]}))
