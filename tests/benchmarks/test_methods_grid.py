"""The methods grid study (benchmarks/studies/methods_grid): its rows and their run order, and the tables and targets
its renderer makes from records."""

from __future__ import annotations

from benchmarks.studies.methods_grid import render, spec


def _record(method: str, pattern: str, induction: bool, ppl: float) -> dict:
    return {"key": f"{method}-{pattern}{'-si' if induction else ''}", "method": method, "pattern": pattern,
            "induction": induction, "ppl": ppl, "sparsity": 0.5, "prune_s": 1.0, "eval_s": 2.0, "peak_rss_mb": 900.0,
            "samples": 32, "seqlen": 512, "seed": 0, "eval": "jargon first 20 x 512", "torch": "2.x", "threads": 1}


def _cells() -> list[tuple]:
    return [(r["tags"]["method"], r["tags"]["pattern"], r["tags"]["induction"]) for r in spec.study()["rows"]]


def test_the_grid_is_every_method_and_pattern_with_and_without_si_except_owl_nm():
    cells = _cells()
    assert len(cells) == 2 * (7 * 6 - 2) and len(set(cells)) == len(cells)
    assert ("owl-wanda", "2:4", False) not in cells and ("owl-wanda", "80%", True) in cells
    study = spec.study()
    assert study["protocol"]["evaluation"]["windows"] == spec.EVAL_WINDOWS == 20
    owl = next(r for r in study["rows"] if r["key"] == "owl-wanda-70%")
    assert owl["recipe"] == {"method": "wanda", "sparsity_profile": "owl", "profile_args": {"m": 5.0, "lam": 0.08},
                             "sparsity": 0.7, "mask_structure": "unstructured", "induction": False}


def test_run_order_targets_first_then_every_method_at_50_and_70_then_the_rest():
    cells = _cells()
    compared = {row for _, top, bottom, _ in spec.TARGETS for row in (top, bottom)}
    first = cells[:len(compared)]
    assert set(first) == compared
    assert [cell[2] for cell in first] == sorted(cell[2] for cell in first)  # plain rows before SI rows
    middle = cells[len(compared):len(compared) + 2 * 7 * 2 - len([c for c in compared if c[1] in ("50%", "70%")])]
    assert {cell[1] for cell in middle} == {"50%", "70%"}
    assert middle[0] == ("magnitude", "50%", False) and ("magnitude", "50%", True) in middle
    rest = cells[len(compared) + len(middle):]
    assert all(cell[1] not in ("50%", "70%") for cell in rest) and rest[-1][2] and not rest[0][2]


def test_tables_ratios_and_targets_from_records():
    records = [_record("alps", "50%", False, 80.0), _record("sparsegpt", "50%", False, 88.0),
               _record("alps", "70%", False, 300.0), _record("sparsegpt", "70%", False, 400.0),
               _record("sparsegpt", "70%", True, 380.0), _record("alps", "70%", True, 310.0),
               _record("alps", "50%", True, 79.0)]
    met = {t["target"]: t["met"] for t in render.targets(records)}
    assert met["ALPS 50 % <= SparseGPT 50 %"] is True and met["ALPS 70 % <= 0.85 x SparseGPT 70 %"] is True
    assert met["SI + ALPS 70 % <= ALPS 70 %"] is False and met["RIA 50 % <= 1.10 x Wanda 50 %"] is None
    table = render.render(None, records)
    assert "| SI + ALPS 70 % <= ALPS 70 % | 1.033 | 1.00 | **no** |" in table
    assert "| alps | yes | 79.00 (1 s) | 310.00 (1 s) | 900 |" in table
    assert "| sparsegpt | 1.000 | 0.950 |" not in table and "| sparsegpt | – | 0.950 |" in table
    assert table.index("| sparsegpt | no |") < table.index("| alps | no |")  # the spec's method order
    assert "Made by `python -m benchmarks.runner methods_grid`." in table


def test_markdown_says_not_run_for_missing_rows():
    table = render.render(None, [_record("alps", "50%", False, 80.0)])
    assert table.count("not run") == len(spec.TARGETS)
