import torch

from optimum_si.observers.windows import training_steps, validation_windows


def test_validation_windows_are_spread_and_leave_one_for_training():
    assert validation_windows(32, 0.25) == [0, 4, 8, 12, 16, 20, 24, 28]
    assert validation_windows(8, 0.0) == []
    assert validation_windows(1, 0.5) == []  # one window: nothing can be held out
    assert validation_windows(3, 0.9) == [0, 1]  # never every window


def test_each_epoch_visits_every_training_window_once_in_a_seeded_order():
    training = [1, 2, 3, 5, 6, 7]
    steps = list(training_steps(training, 3, torch.Generator().manual_seed(0)))
    assert len(steps) == 18
    assert all(sorted(steps[i:i + 6]) == training for i in range(0, 18, 6))
    assert steps[:6] != steps[6:12]  # a fresh order each epoch
    assert steps == list(training_steps(training, 3, torch.Generator().manual_seed(0)))


class _Ranks:
    """A stand-in process group whose largest share of windows is `most`."""

    def __init__(self, most: int) -> None:
        self.most = most

    def max_int(self, value: int) -> int:
        return max(value, self.most)


def test_a_rank_with_fewer_windows_sits_out_the_extra_steps():
    steps = list(training_steps([0, 1], 2, torch.Generator().manual_seed(0), _Ranks(3)))
    assert len(steps) == 6 and steps[2] is None and steps[5] is None
    assert sorted(steps[:2]) == [0, 1] and sorted(steps[3:5]) == [0, 1]
