"""The README's summary table and docs/results.md show the committed results, and the documents speak of the
project, not of how its work was tracked."""

from __future__ import annotations

import os
import re

import pytest

from benchmarks import update_readme


@pytest.mark.parametrize("name", ["README.md", "docs/results.md"])
def test_the_tables_in_the_documents_are_current(name):
    with open(os.path.join(update_readme.ROOT, name), encoding="utf-8") as handle:
        text = handle.read()
    assert update_readme.fill(text, update_readme.bodies()) == text, (
        f"{name} shows older tables than the committed results: run `python -m benchmarks.update_readme`")


def test_the_readme_has_the_summary_and_results_md_every_full_table():
    def markers(name):
        with open(os.path.join(update_readme.ROOT, name), encoding="utf-8") as handle:
            return set(re.findall(r"<!-- ([\w-]+) -->", handle.read()))

    assert markers("README.md") == {"results-summary", "reconstruction-best"}
    assert markers("docs/results.md") == set(update_readme.TABLES) | {"cross-domain-grid"}


def test_the_documents_cite_no_issue_numbers():
    for name in update_readme.documents():
        with open(os.path.join(update_readme.ROOT, name), encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                assert not re.search(r"issue|#\d", line, re.IGNORECASE), f"{name}:{number}: {line.strip()}"
