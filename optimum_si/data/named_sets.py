"""Named text sets (C4, WikiText-2, Pile-val), any Hub dataset and any local dataset folder, for calibration and
perplexity.

Loading goes through `datasets.load_dataset` (`load_from_disk` for a folder written by `save_to_disk`). Text is drawn
the way each set is used in the pruning literature (the SparseGPT / Wanda / AWQ loaders):

- C4 calibration: seeded random documents of the first training shard that are longer than a window, one window at a
  seeded random offset in each. C4 evaluation: the first 1100 validation documents joined with spaces, 256 windows.
- WikiText-2: calibration windows at seeded random starts of the train split joined with single spaces (as in the GPTQ
  lineage, whose test split, and so our perplexity, is joined with blank lines).
- Pile-val (AWQ): documents shuffled with the seed, concatenated, cut into consecutive windows; no evaluation split.
- Any other Hub dataset or local folder: its texts joined with blank lines, windows at seeded random starts (the same as
  a list of strings).

Every load also returns a provenance dict (name, repo, config, split, revision, windows, seed) that the recipe, the
report and the model card record.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["TextSet", "LoadedTextSet", "NAMED_SETS", "text_set", "is_text_set_reference", "load_text_set",
           "warn_if_shadowing", "calibration_ids", "evaluation_ids"]

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class TextSet:
    """Where a text set comes from and how its text is drawn."""

    path: str  # Hub dataset id, or a local folder
    config: str | None = None
    split: str = "train"
    column: str | None = None  # None: `text`/`content`/`sentence`, or the only string column
    data_files: str | None = None  # one file of a large repo (C4's first shard), relative to the repo root
    # None means the repo's main branch and is recorded as "main" (plus the commit it resolved to, when the Hub says).
    revision: str | None = None
    name: str | None = None  # the short name of a named set
    sampling: str = "stream"  # "stream" | "documents" (C4) | "shuffled" (Pile-val)
    joiner: str = "\n\n"
    max_documents: int | None = None  # use only the first documents (C4 evaluation)
    max_windows: int | None = None  # evaluation windows at most (C4 evaluation)


@dataclass(frozen=True)
class LoadedTextSet:
    """A text set with its texts already loaded (`load_text_set`): the command line fetches a named or Hub set before
    it loads the model, so that a network failure costs nothing."""

    source: TextSet
    texts: list[str]
    commit: str | None = None


# C4 and WikiText are pinned to the commits that public pruning/quantisation scripts pin (allenai/c4 1588ec45...,
# the commit torchtitan and others read; Salesforce/wikitext b08601e0..., the parquet layout), so a named set means the
# same text next year. pile-val-backup is not pinned: no commit could be confirmed from here (these machines cannot
# reach the Hub); it follows `main`, and the provenance records the commit the Hub resolves it to.
C4_REVISION = "1588ec454efa1a09f29cd18ddd04fe05fc8653a2"
WIKITEXT_REVISION = "b08601e04326c79dfdd32d625aee71d232d685c3"
NAMED_SETS: dict[str, dict[str, TextSet | None]] = {
    "c4": {
        "calibration": TextSet("allenai/c4", config="en", split="train", column="text",
                               data_files="en/c4-train.00000-of-01024.json.gz", revision=C4_REVISION, name="c4",
                               sampling="documents"),
        "evaluation": TextSet("allenai/c4", config="en", split="validation", column="text",
                              data_files="en/c4-validation.00000-of-00008.json.gz", revision=C4_REVISION, name="c4",
                              joiner=" ", max_documents=1100, max_windows=256),
    },
    "wikitext2": {
        "calibration": TextSet("Salesforce/wikitext", config="wikitext-2-raw-v1", split="train", column="text",
                               revision=WIKITEXT_REVISION, name="wikitext2", joiner=" "),
        "evaluation": TextSet("Salesforce/wikitext", config="wikitext-2-raw-v1", split="test", column="text",
                              revision=WIKITEXT_REVISION, name="wikitext2", joiner="\n\n"),
    },
    "pileval": {
        "calibration": TextSet("mit-han-lab/pile-val-backup", split="validation", column="text", revision=None,
                               name="pileval", sampling="shuffled"),
        "evaluation": None,
    },
}


def is_text_set_reference(value: Any) -> bool:
    """True for what `text_set` accepts: a `TextSet`, a loaded one, a named set that is not also an existing file, an
    existing folder, or a string that looks like a Hub dataset id and is not an existing file."""
    if isinstance(value, (TextSet, LoadedTextSet)):
        return True
    if not isinstance(value, (str, os.PathLike)):
        return False
    value = os.fspath(value)
    if os.path.isdir(value):
        return True
    if os.path.exists(value):  # a file of that name is what the user means, even if it is called "c4"
        return False
    if value in NAMED_SETS:
        return True
    # "notes/calib.txt" that does not exist is a mistyped file, not a Hub id: keep the file error for it.
    text_file = os.path.splitext(value)[1].lower() in (".txt", ".text", ".md")
    return bool(_HUB_ID.match(value)) and not text_file


def warn_if_shadowing(reference: Any) -> None:
    """Log that an existing file or folder named like a named set ("c4") is read instead of the set. A path that
    exists wins, as a local folder wins over a Hub id in `from_pretrained` and `load_dataset`; it is said, since the
    user may have meant the set."""
    if isinstance(reference, (str, os.PathLike)) and os.fspath(reference) in NAMED_SETS \
            and os.path.exists(reference):
        reference = os.fspath(reference)
        logger.warning("dataset=%r is the local %s %s, not the named set %r (a path that exists wins); for the "
                       "named set, pass text_set(%r) or run from another folder.", reference,
                       "folder" if os.path.isdir(reference) else "file", os.path.abspath(reference), reference,
                       reference)


def text_set(reference: str | TextSet, purpose: str = "calibration", **overrides: Any) -> TextSet:
    """The `TextSet` for a named set, a Hub dataset id or a local folder; `overrides` set its fields (e.g.
    `split="validation"`, `column="content"`, `config=...`, `revision=...`). A name of `NAMED_SETS` is always the
    named set here (a bare `dataset="c4"` is a file or folder of that name first: see `load_text_set`)."""
    if isinstance(reference, TextSet):
        return dataclasses.replace(reference, **overrides) if overrides else reference
    reference = os.fspath(reference)
    if reference in NAMED_SETS:
        found = NAMED_SETS[reference][purpose]
        if found is None:
            usable = sorted(n for n, sets in NAMED_SETS.items() if sets[purpose] is not None)
            raise ValueError(f"{reference!r} has no {purpose} split in the literature; use one of {usable}, or a Hub "
                             "dataset id with split=...")
        return dataclasses.replace(found, **overrides) if overrides else found
    if not is_text_set_reference(reference):
        raise ValueError(f"{reference!r} is neither a named set ({', '.join(NAMED_SETS)}), a local folder, nor a Hub "
                         "dataset id such as 'owner/name'.")
    # A Hub id or folder without a split: train for calibration, test for evaluation.
    return TextSet(reference, **{"split": "train" if purpose == "calibration" else "test", **overrides})


def load_text_set(reference: str | TextSet | LoadedTextSet, purpose: str = "calibration") -> LoadedTextSet:
    """The texts of a named set, Hub dataset or local dataset folder, loaded now (the network is only used here)."""
    if isinstance(reference, LoadedTextSet):
        return reference
    if isinstance(reference, (str, os.PathLike)) and os.path.isdir(reference):  # a folder wins over a named set
        warn_if_shadowing(reference)
        source = TextSet(os.fspath(reference), split="train" if purpose == "calibration" else "test")
    else:
        source = text_set(reference, purpose)
    texts, commit = _load_texts(source)
    return LoadedTextSet(source, texts, commit)


def _load_texts(source: TextSet) -> tuple[list[str], str | None]:
    """The texts of `source` (at most `max_documents`), and the commit they came from when the Hub reported it."""
    try:
        import datasets
    except ImportError:
        raise ImportError('Named and Hub datasets need `datasets`: pip install "optimum-si[eval]".') from None
    commit = None
    if os.path.isdir(source.path):
        data = _load_folder(datasets, source)
    else:
        from ..network import hub_access, offline

        data_files = {source.split: source.data_files} if source.data_files else None
        with hub_access(f"load the dataset {source.path!r}", datasets=True):
            # Resolved first and loaded at, so the recorded commit is the one read even if the branch moves meanwhile.
            commit = _commit_of(source)
            try:
                data = datasets.load_dataset(source.path, source.config, data_files=data_files, split=source.split,
                                             revision=commit or source.revision)
            except (FileNotFoundError, ValueError, ConnectionError, OSError) as err:
                from ..network import is_network_failure

                if is_network_failure(err) and not offline(datasets=True):
                    raise  # hub_access names the endpoint
                fix = ("HF_HUB_OFFLINE is set (or HF_DATASETS_OFFLINE) and it is not in the datasets "
                       "cache: load it once with network" if offline(datasets=True)
                       else "Check the name, split and config")
                raise ValueError(
                    f"Could not load the dataset {source.path!r} (config {source.config!r}, split {source.split!r}): "
                    f"{_first_line(err)}. {fix}, or pass a local folder or text file."
                ) from err
    if source.max_documents is not None:
        data = data.select(range(min(source.max_documents, len(data))))
    return _column(data, source), commit


def _first_line(error: BaseException) -> str:
    """The most specific first line of `error`: the deepest error it was raised from that says something."""
    lines = []
    current: BaseException | None = error
    while current is not None and len(lines) < 16:
        text = " ".join(str(current).split())
        if text:
            lines.append(text)
        current = current.__cause__
    return lines[-1][:300] if lines else type(error).__name__


def _load_folder(datasets: Any, source: TextSet) -> Any:
    """A local dataset folder: written by `save_to_disk`, or data files `datasets` reads (.txt, .json, .csv...)."""
    path = source.path
    names = set(os.listdir(path))
    if "config.json" in names and any(n.endswith(".safetensors") or n.endswith(".bin") for n in names):
        raise ValueError(f"dataset={path!r} is a model folder (config.json and weights), not calibration text; pass a "
                         "UTF-8 text file, a dataset folder, or a named set such as 'wikitext2'.")
    # A local folder loads in moments: its progress bars, and datasets' own log line of a failure (which the error
    # raised here carries), would only bury the one line that says what to do.
    shown, quiet = datasets.is_progress_bar_enabled(), logging.getLogger("datasets")
    level = quiet.level
    datasets.disable_progress_bars()
    quiet.setLevel(logging.CRITICAL)
    try:
        if names & {"dataset_info.json", "dataset_dict.json"}:
            data = datasets.load_from_disk(path)  # a folder written by `save_to_disk`
            if isinstance(data, datasets.DatasetDict):
                if source.split not in data:
                    raise ValueError(f"dataset={path!r} has the splits {list(data)}, not {source.split!r}; pass "
                                     "split=...")
                data = data[source.split]
            return data
        return datasets.load_dataset(path, source.config, split=source.split)
    except ValueError as err:
        if str(err).startswith(f"dataset={path!r}"):
            raise
        cause: BaseException = err
    except Exception as err:  # noqa: BLE001 - datasets raises many kinds (DatasetGenerationError, ArrowInvalid...)
        cause = err
    finally:
        quiet.setLevel(level)
        if shown:
            datasets.enable_progress_bars()
    raise ValueError(
        f"dataset={path!r} is a folder that `datasets` cannot read as a dataset ({type(cause).__name__}: "
        f"{_first_line(cause)}); pass a folder written by Dataset.save_to_disk, a folder of .txt, .json, .jsonl, .csv "
        "or .parquet files with a text column, or a UTF-8 text file."
    ) from cause


def _column(data: Any, source: TextSet) -> list[str]:
    if source.column is None:
        from .text import dataset_texts  # here, not at the top: the CLI checks references before loading torch

        return dataset_texts(data)
    if source.column not in data.column_names:
        raise ValueError(f"The dataset {source.path!r} has no column {source.column!r} (columns: {data.column_names}); "
                         "pass column=...")
    return list(data[source.column])


def _commit_of(source: TextSet) -> str | None:
    """The Hub commit `source.revision` resolves to, for the record; None for local data, offline, or when the Hub
    answers without one (recording it must never fail a load that succeeds). Called inside `hub_access`: a Hub that
    does not answer at all is raised, since loading would fail the same way."""
    from huggingface_hub import HfApi

    from ..network import is_network_failure, offline
    from ..settings import network_timeout

    if os.path.isdir(source.path) or offline(datasets=True):
        return None
    try:
        return HfApi().dataset_info(source.path, revision=source.revision, timeout=network_timeout()).sha
    except Exception as err:  # noqa: BLE001 - an answer without the commit only loses the record
        if is_network_failure(err):
            raise
        logger.info("Could not read the commit of %s (%s); recording the revision only.", source.path, err)
        return None


def _provenance(source: TextSet, commit: str | None, windows: int, seqlen: int, seed: int | None) -> dict[str, Any]:
    """What the recipe, the report and the card record; a local folder is recorded by its name, never its path."""
    local = os.path.isdir(source.path)
    record = {
        "name": source.name or (os.path.basename(os.path.normpath(source.path)) if local else source.path),
        "repo": None if local else source.path,
        "config": source.config,
        "split": source.split,
        "column": source.column,
        "data_files": source.data_files,
        "revision": None if local else (source.revision or "main"),
        "commit": commit,
        "sampling": source.sampling,
        "windows": windows,
        "seqlen": seqlen,
    }
    if seed is not None:
        record["seed"] = seed
    return record


def _encode(tokenizer: Any, text: str) -> torch.Tensor:
    import torch  # here, not at the top: the CLI checks references before loading torch

    return torch.as_tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long).reshape(-1)


def _document_windows(texts: list[str], tokenizer: Any, num_samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """One window per seeded random document that is longer than `seqlen`, at a seeded random offset in it."""
    import torch

    rng = random.Random(seed)
    windows, misses = [], 0
    while len(windows) < num_samples:
        ids = _encode(tokenizer, texts[rng.randint(0, len(texts) - 1)])
        if ids.numel() <= seqlen:
            misses += 1
            # Bounded: a set whose documents are all shorter than a window would otherwise never finish.
            if misses > 1000 + 100 * num_samples:
                raise ValueError(f"Too few documents are longer than seqlen={seqlen} tokens; lower seqlen.")
            continue
        start = rng.randint(0, ids.numel() - seqlen - 1)
        windows.append(ids[start:start + seqlen])
    return torch.stack(windows)


def _shuffled_windows(texts: list[str], tokenizer: Any, num_samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """Documents in a seeded random order, concatenated until there are enough tokens, cut into consecutive windows."""
    import torch

    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    pieces, total = [], 0
    for index in order:
        ids = _encode(tokenizer, texts[index].strip())
        pieces.append(ids)
        total += ids.numel()
        if total >= num_samples * seqlen:
            break
    if total < num_samples * seqlen:
        raise ValueError(f"The dataset has {total} tokens, fewer than {num_samples} windows of {seqlen}; lower "
                         "num_samples or seqlen.")
    return torch.cat(pieces)[:num_samples * seqlen].reshape(num_samples, seqlen)


def calibration_ids(reference: str | TextSet | LoadedTextSet, tokenizer: Any, num_samples: int, seqlen: int,
                    seed: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """`[num_samples, seqlen]` calibration token ids drawn from a text set, and their provenance."""
    from .windows import draw_windows

    if tokenizer is None:
        raise ValueError("A named or Hub calibration dataset is text, so a tokenizer is needed: pass "
                         "prune(..., tokenizer=tokenizer).")
    loaded = load_text_set(reference)
    source, texts, commit = loaded.source, loaded.texts, loaded.commit
    if not texts:
        raise ValueError(f"The dataset {source.path!r} (split {source.split!r}) has no texts.")
    if source.sampling == "documents":
        ids = _document_windows(texts, tokenizer, num_samples, seqlen, seed)
    elif source.sampling == "shuffled":
        ids = _shuffled_windows(texts, tokenizer, num_samples, seqlen, seed)
    else:
        ids = draw_windows(_encode(tokenizer, source.joiner.join(texts)), num_samples, seqlen, seed)
    logger.info("Calibration: %d windows of %d tokens from %s (%s).", num_samples, seqlen, source.path, source.split)
    return ids, _provenance(source, commit, ids.shape[0], seqlen, seed)


def evaluation_ids(reference: str | TextSet | LoadedTextSet, tokenizer: Any,
                   seqlen: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """The evaluation token stream of a text set (its texts joined as in the literature, cut to its window limit), and
    its provenance; the windows themselves are cut by `optimum_si.evaluation.perplexity`."""
    import torch

    if tokenizer is None or isinstance(tokenizer, torch.Tensor):
        raise ValueError("Perplexity on a named or Hub dataset needs a tokenizer, not token ids.")
    loaded = load_text_set(reference, purpose="evaluation")
    source, texts, commit = loaded.source, loaded.texts, loaded.commit
    ids = _encode(tokenizer, source.joiner.join(texts))
    if source.max_windows is not None:
        ids = ids[:source.max_windows * seqlen]
    return ids, _provenance(source, commit, ids.numel() // seqlen, seqlen, None)
