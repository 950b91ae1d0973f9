"""The parent process of the check: runs each section in a process of its own under its deadline, and rewrites
gpu_check.json and gpu_check.md whenever a section reports a record, so a run stopped at any moment leaves what it
finished."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_check import summary
from benchmarks.gpu_check.sections import SECTIONS, deadlines

SCHEMA = "optimum-si-gpu-check/1"
JSON_NAME, MARKDOWN_NAME, LOG_NAME = "gpu_check.json", "gpu_check.md", "gpu_check.log"
REPO_ROOT = Path(__file__).resolve().parents[2]
POLL_S = 0.5
# A section stopped at its deadline gets this long to exit after SIGTERM before it is killed.
GRACE_S = 5.0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def new_document(mode: str, budget_s: float, argv: list[str], names: list[str]) -> dict[str, Any]:
    return {
        "schema": SCHEMA, "mode": mode, "command": argv, "started": _now(), "updated": _now(), "finished": False,
        "budget_s": budget_s, "elapsed_s": 0.0,
        "sections": {name: {"title": SECTIONS[name].title, "status": "pending", "budget_s": None, "seconds": None,
                            "error": None, "needs": [], "notes": [], "records": [], "summary": {}}
                     for name in names},
    }


def write_document(doc: dict[str, Any], out: Path) -> None:
    """gpu_check.json and gpu_check.md, each written to a temporary name and renamed: never half a file."""
    doc["updated"] = _now()
    for name, section in doc["sections"].items():
        section["summary"] = summary.summarise(name, section["records"], doc["mode"])
    for file_name, text in ((JSON_NAME, json.dumps(doc, indent=2) + "\n"), (MARKDOWN_NAME, summary.markdown(doc))):
        tmp = out / f".{file_name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / file_name)


def _child_env(assets: Path, mode: str) -> dict[str, str]:
    paths = [str(REPO_ROOT)]
    # Python packages the asset pack carries (the GGUF reader): before transformers looks for them at import.
    for site in sorted(assets.glob("*/site")):
        paths.append(str(site))
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if mode == "cpu":  # tiny models: thread hand-offs would cost more than the work (tests/conftest.py)
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _stop(process: subprocess.Popen) -> None:
    """End a section's process and everything it started (it leads a process group of its own)."""
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


class _Channel:
    """Reads the complete lines a section has appended to its JSON-lines file so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next read
        self.offset += len(complete)
        return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]


def run_section(name: str, doc: dict[str, Any], out: Path, work: Path, assets: Path, deadline: float,
                options: dict[str, Any], log=print) -> None:
    """Run one section's process until it ends or its deadline passes, folding its messages into `doc`."""
    section = doc["sections"][name]
    started = time.time()
    section.update(status="running", budget_s=round(deadline - started, 1))
    write_document(doc, out)
    channel_path = work / f"{name}.channel.jsonl"
    channel_path.unlink(missing_ok=True)
    config = {"section": name, "mode": doc["mode"], "out": str(out), "work": str(work), "assets": str(assets),
              "repo": str(REPO_ROOT), "deadline": deadline, "options": options, "channel": str(channel_path)}
    config_path = work / f"{name}.config.json"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    channel = _Channel(channel_path)
    with open(out / LOG_NAME, "a", encoding="utf-8") as log_file:
        log_file.write(f"\n===== {name} ({_now()}, budget {deadline - started:.0f} s) =====\n")
        log_file.flush()
        process = subprocess.Popen([sys.executable, "-m", "benchmarks.gpu_check", "--child", name, "--child-config",
                                    str(config_path)], cwd=REPO_ROOT, env=_child_env(assets, doc["mode"]), stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        timed_out = False
        while True:
            finished = process.poll() is not None
            if not finished and time.time() > deadline:
                _stop(process)
                timed_out = True
            if _fold(section, channel.read(), name, log):
                write_document(doc, out)
            if finished or timed_out:
                break
            time.sleep(POLL_S)
    section["seconds"] = round(time.time() - started, 1)
    if timed_out:
        section["status"] = "timed_out"
        section["error"] = (f"stopped at its budget of {section['budget_s']:.0f} s after "
                            f"{len(section['records'])} record(s), each complete")
    elif section["status"] == "running":
        if process.returncode != 0 and section["error"] is None:
            section["error"] = f"the section's process exited with status {process.returncode}: see {LOG_NAME}"
        if section["error"] is not None:
            section["status"] = "failed"
        elif any(r.get("error") for r in section["records"]):
            section["status"] = "partial"
        else:
            section["status"] = "ok"
    log(f"[{name}] {section['status']} in {section['seconds']:.0f} s"
        + (f": {section['error'].splitlines()[0]}" if section["error"] else ""))
    write_document(doc, out)


def _fold(section: dict[str, Any], messages: list[dict[str, Any]], name: str, log) -> bool:
    for message in messages:
        if "record" in message:
            section["records"].append(message["record"])
            if message.get("line"):
                log(f"[{name}] {message['line']}")
        elif "note" in message:
            section["notes"].append(message["note"])
            log(f"[{name}] note: {message['note']}")
        elif "skipped" in message:
            section.update(status="skipped", error=None, needs=message.get("needs", []))
            section["notes"].append(f"skipped: {message['skipped']}")
            log(f"[{name}] skipped: {message['skipped']}")
        elif "error" in message:
            section["error"] = message["error"] + "\n" + message.get("traceback", "")
    return bool(messages)


def run_check(out: Path, mode: str, budget_s: float, names: list[str], work: Path, assets: Path,
              options: dict[str, Any], argv: list[str], log=print) -> dict[str, Any]:
    """Every chosen section in order, each under its share of `budget_s`; returns the final document."""
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    (out / LOG_NAME).write_text(f"optimum-si GPU check, {mode} mode, started {_now()}\n", encoding="utf-8")
    start = time.time()
    doc = new_document(mode, budget_s, argv, names)
    write_document(doc, out)
    ends = deadlines(names, start, budget_s)
    for name in names:
        if ends[name] - time.time() < 1.0:
            doc["sections"][name].update(status="skipped", error=None)
            doc["sections"][name]["notes"].append("skipped: no time left in the overall budget")
            continue
        try:
            run_section(name, doc, out, work, assets, ends[name], options, log)
        except Exception as err:  # noqa: BLE001 - the plumbing failing for one section must not lose the others
            doc["sections"][name].update(status="failed", error=f"the check could not run this section: {err!r}")
        doc["elapsed_s"] = round(time.time() - start, 1)
        write_document(doc, out)
    doc["finished"] = True
    doc["elapsed_s"] = round(time.time() - start, 1)
    write_document(doc, out)
    return doc
