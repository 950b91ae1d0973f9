"""Record evaluation results into a saved checkpoint after the fact (`optimum-si eval --model out/`): the numbers go
into `si_report.json` and into the model card's Evaluation table and `model-index` metadata.

Only those two files change, each replaced atomically under the folder's write lock; the rest of the card (licence,
notes given at save time, edits of your own) is kept: only its Evaluation section and the `model-index` metadata are
rewritten.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..checkpoint.files import CARD_NAME, CONFIG_NAME, REPORT_NAME
from ..checkpoint.locking import output_lock
from ..recipe.config import SIConfig
from ..reporting.report import PruneReport
from .card import build_model_card

__all__ = ["is_checkpoint", "record_results"]

_SECTION = re.compile(r"\n## Evaluation\n.*?(?=\n## |\Z)", re.S)


def is_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether `folder` is a local checkpoint written by optimum-si (it holds `si_config.json` and `si_report.json`)."""
    folder = os.fspath(folder)
    return all(os.path.isfile(os.path.join(folder, name)) for name in (CONFIG_NAME, REPORT_NAME))


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _updated_card(folder: str, report: PruneReport) -> str | None:
    """The folder's card with the Evaluation section and model-index of `report`; None when it has no card."""
    from huggingface_hub import ModelCard

    path = os.path.join(folder, CARD_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", newline="") as handle:  # not ModelCard.load: it tries the Hub for a non-file
        card = ModelCard(handle.read())
    title = re.search(r"^# (.+)$", card.text, re.M)
    config = SIConfig.from_pretrained(folder)
    fresh = build_model_card(None, config, report, base_model=card.data.base_model,
                             model_name=card.data.model_name or (title.group(1).strip() if title else None))
    card.data.eval_results = fresh.data.eval_results
    card.data.model_name = fresh.data.model_name
    section = _SECTION.search(fresh.text)
    new = section.group(0).rstrip("\n") + "\n" if section else ""
    if _SECTION.search(card.text):
        card.text = _SECTION.sub(lambda _: new, card.text, count=1)
    elif "\n## Versions\n" in card.text:
        card.text = card.text.replace("\n## Versions\n", new + "\n## Versions\n", 1)
    else:
        card.text = card.text.rstrip("\n") + "\n" + new
    return str(card)


def record_results(folder: str | os.PathLike, results: dict[str, Any], model: str = "pruned") -> list[str]:
    """Add `{"perplexity": {set: value}, "zero_shot": {task: {metric: value}}, "seqlen": n}` of `model` ("pruned"
    or "dense") to the checkpoint in `folder`; returns the paths rewritten. Earlier results of other sets, tasks or
    the other model are kept; the same set or task measured again replaces its old value."""
    folder = os.fspath(folder)
    if model not in ("pruned", "dense"):
        raise ValueError(f"model must be 'pruned' or 'dense', got {model!r}.")
    if not is_checkpoint(folder):
        raise ValueError(f"{folder!r} is not an optimum-si checkpoint (it needs si_config.json and {REPORT_NAME}).")
    with output_lock(folder):
        report = PruneReport.load(folder)
        report.add_results(results, model)
        card = _updated_card(folder, report)
        report.save(folder)
        written = [os.path.join(folder, REPORT_NAME)]
        if card is not None:
            _write(os.path.join(folder, CARD_NAME), card)
            written.append(os.path.join(folder, CARD_NAME))
    return written
