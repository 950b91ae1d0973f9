"""A streamed run's progress file and fingerprint: what makes two runs the same run (so one may resume the other),
which blocks are finished and in which parts, and what a run writes into its output folder."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from typing import Any

import torch

from .files import CARD_NAME, CONFIG_NAME, INDEX_NAME, MANIFEST_NAME, PLOT_FILES, PROGRESS_NAME, REPORT_NAME
from .folders import describe, write_json_durably
from .index import COPIED_FILES
from .links import resolved, trusted_roots
from .shards import PART_PATTERN, packed_away

__all__ = ["run_fingerprint", "fingerprint_differences", "read_progress", "write_progress", "copy_side_files",
           "output_names", "is_complete"]

# Keys of a recipe dict that do not change the pruned weights: they must not block a resume.
_RESULT_NEUTRAL = ("meta",)


def run_fingerprint(recipe: dict[str, Any], ids: torch.Tensor | None, source: str) -> dict[str, Any]:
    """What makes two runs the same run (so one may resume the other, and the ranks of a data-parallel run may run
    it together): the recipe (`SIConfig.to_dict()`, whose `meta` versions are left out), the calibration token ids
    and the source (`CheckpointIndex.identity()` of a checkpoint). Run options are not part of a recipe, so they never
    block a resume."""
    recipe = {k: v for k, v in recipe.items() if k not in _RESULT_NEUTRAL}
    calibration = "none"
    if ids is not None:
        tokens = ids.detach().to("cpu", torch.int64).contiguous()
        calibration = hashlib.sha256(f"{tuple(tokens.shape)}".encode() + tokens.numpy().tobytes()).hexdigest()[:16]
    return {"recipe": json.loads(json.dumps(recipe, sort_keys=True)), "calibration": calibration, "source": source}


def fingerprint_differences(stored: Any, current: dict[str, Any], manifest: str = "ok",
                            version: str | None = None) -> str:
    """What differs between the run that wrote a folder and this one, in words. `manifest` and `version` are how the
    folder's manifest was found and the version its recipe names (`folders.Existing`): a checkpoint whose manifest
    is missing or damaged is said to be so, never guessed to be an older release's."""
    if manifest == "missing":
        if version is not None and _at_least(version, (0, 2)):
            why = f"deleted: optimum-si {version}, which wrote it, always writes one"
        else:
            why = (f"deleted, or written by optimum-si {version or '(version unknown)'} before checkpoints had "
                   "manifests")
        return f"what it was made from, which is unknown: it has no {MANIFEST_NAME} ({why})"
    if manifest.startswith("damaged"):
        return f"what it was made from, which is unknown: its {MANIFEST_NAME} is {manifest}"
    if not isinstance(stored, dict):
        return "what it was made from (it was saved from a model in memory, which records no source fingerprint)"
    parts = []
    old, new = stored.get("recipe") or {}, current["recipe"]
    fields = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if fields:
        parts.append("the recipe (" + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in fields[:4]) + ")")
    if stored.get("calibration") != current["calibration"]:
        parts.append("the calibration data")
    if stored.get("source") != current["source"]:
        parts.append("the source checkpoint")
    return " and ".join(parts) or "nothing"


def _at_least(version: str, minimum: tuple[int, ...]) -> bool:
    numbers = re.findall(r"\d+", version)[:len(minimum)]
    return tuple(int(n) for n in numbers) >= minimum


def read_progress(folder: str, num_blocks: int) -> dict[str, Any] | None:
    """The progress of an unfinished run in `folder`, checked; a clear error if it is corrupted or was edited."""
    path = os.path.join(folder, PROGRESS_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            progress = json.load(handle)
        _check_progress(progress, num_blocks)
        for shard in progress["shards"]:
            if not os.path.isfile(os.path.join(folder, shard["file"])) \
                    and not packed_away(folder, progress.get("packing"), shard["file"]):
                raise ValueError(f"its part {shard['file']} is missing")
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:  # JSONDecodeError: a ValueError
        raise ValueError(f"The progress file {path} is corrupted ({err}); pass overwrite=True to start over.") from err
    return progress


def _check_progress(progress: dict[str, Any], num_blocks: int) -> None:
    if not isinstance(progress["fingerprint"], dict):
        raise ValueError("it has no run fingerprint")
    finished = progress["finished_blocks"]
    if not isinstance(finished, int) or not 0 <= finished <= num_blocks:
        raise ValueError(f"finished_blocks={finished!r} for a model of {num_blocks} blocks")
    for shard in progress["shards"]:
        if not isinstance(shard["file"], str) or not PART_PATTERN.fullmatch(shard["file"]):
            raise ValueError(f"{shard['file']!r} is not a part file of this run")
        if not all(isinstance(k, str) for k in shard["keys"]) or not isinstance(shard["bytes"], int):
            raise ValueError(f"bad entry for {shard['file']}")
    ratios = progress.get("owl_ratios", [])
    if not isinstance(ratios, list) or len(ratios) > num_blocks or not all(
            r is None or type(r) in (int, float) and math.isfinite(r) for r in ratios):
        raise ValueError(f"bad OWL profile {str(ratios)[:80]}")
    for name, layer in progress["layers"].items():
        if set(layer) - {"name", "numel", "zeros", "error"} or not isinstance(layer["name"], str) \
                or not isinstance(layer["numel"] + layer["zeros"], int):
            raise ValueError(f"bad layer record for {name}")
    digests = progress.get("source_digests", {})
    if not isinstance(digests, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in digests.items()):
        raise ValueError("bad record of the source's bytes")
    packing = progress.get("packing")
    if packing is not None and not (isinstance(packing, list) and all(
            isinstance(shard, list) and all(isinstance(entry, list) and len(entry) == 2
                                            and isinstance(entry[0], str) and PART_PATTERN.fullmatch(entry[0])
                                            and isinstance(entry[1], str) for entry in shard)
            for shard in packing)):
        raise ValueError(f"bad shard plan {str(packing)[:80]}")


def write_progress(folder: str, progress: dict[str, Any]) -> None:
    # The parts it names were renamed into place before: syncing the folder makes both renames durable.
    write_json_durably(folder, PROGRESS_NAME, progress)


def copy_side_files(source: str, save_dir: str) -> None:
    """Copy the source's config, tokenizer, generation config and licence files (each read where it really lives,
    see links.py) into `save_dir`."""
    roots = trusted_roots(source)
    for name in COPIED_FILES:
        path = os.path.join(source, name)
        if os.path.isfile(path):
            shutil.copyfile(resolved(source, name, name, roots), os.path.join(save_dir, name))


def output_names(source: str, present: list[str]) -> set[str]:
    """The names a streaming run will write (of `present`, the shard names it may write), to refuse clashes early."""
    shards = {name for name in present if re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", name)}
    copied = {name for name in COPIED_FILES if os.path.isfile(os.path.join(source, name))}
    return shards | copied | {"config.json", "model.safetensors", INDEX_NAME, CONFIG_NAME, REPORT_NAME,
                              CARD_NAME, *PLOT_FILES}


def is_complete(save_dir: str) -> bool:
    """Whether `save_dir` holds a finished checkpoint (its manifest is written last)."""
    return describe(os.path.realpath(save_dir)).complete
