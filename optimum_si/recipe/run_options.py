"""`RunOptions`: how one machine runs a recipe, never what the recipe produces.

Every combination gives the same pruned weights bit for bit, so none of them is written to `si_config.json`, the card
or a resume fingerprint. Pass them to `SIPruner(...)` (for every run of that pruner) or `prune(...)` (for one run).
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..fields import Choice, ConfigBase, check_bool, check_choice, knob
from ..modeling.devices import validate_device

__all__ = ["RunOptions", "ActivationStorage"]


class ActivationStorage(Choice):
    AUTO = "auto"
    DEVICE = "device"
    CPU = "cpu"
    DISK = "disk"


@dataclass
class RunOptions(ConfigBase):
    device: str | None = knob("Execution device for block work ('cuda', 'cpu', ...). Default: where the blocks are.",
                              default=None)
    activation_storage: ActivationStorage = knob(
        "Where calibration activations wait between blocks: 'auto' (on the device when it is the CPU, else pinned CPU "
        "memory, moved to the device one batch at a time), 'device', 'cpu', or 'disk' (for very long calibration "
        "sets).", default="auto")
    activation_dir: str | None = knob("Folder for activation_storage='disk' (default: the system temp folder).",
                                      default=None)
    show_progress: bool = knob("Show a tqdm progress bar over blocks.", default=True)

    def __post_init__(self) -> None:
        self.device = validate_device(self.device)
        self.activation_storage = check_choice(None, "activation_storage", self.activation_storage,
                                               ActivationStorage)
        if self.activation_dir is not None and (not isinstance(self.activation_dir, str) or not self.activation_dir):
            raise ValueError(f"activation_dir must be a folder path or None, got {self.activation_dir!r}.")
        self.show_progress = check_bool(None, "show_progress", self.show_progress)

    def updated(self, **changes: object) -> RunOptions:
        """A copy with the options that are not None in `changes` replaced."""
        given = {name: value for name, value in changes.items() if value is not None}
        return self.replace(**given) if given else self
