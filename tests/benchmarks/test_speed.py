"""benchmarks/speed.py's table: one row per implementation, means over the interleaved runs, the targets' ratios."""

from __future__ import annotations

from benchmarks import speed


def _run(impl: str, mode: str, seconds: float, rss: float) -> dict:
    induction, precision = speed.MODES[mode]
    return {"impl": impl, "method": "wanda", "induction": induction, "induction_precision": precision,
            "prune_s": seconds, "peak_rss_mb": rss, "torch": "2.x", "threads": 2, "cores": 2}


def test_table_means_the_repeats_and_gives_the_ratios():
    records = [_run("reference", "plain", 40, 1000), _run("optimum-si", "plain", 20, 1100),
               _run("optimum-si", "si", 50, 1200), _run("optimum-si", "si-bf16", 30, 1300),
               _run("reference", "plain", 44, 1000), _run("optimum-si", "plain", 24, 1100),
               _run("optimum-si", "si", 54, 1200), _run("optimum-si", "si-bf16", 36, 1300)]
    text = speed.markdown(records)
    assert "| wanda 50% | reference | 2 | 42.0 | 40.0-44.0 | 1000 |" in text
    assert "| wanda 50% | optimum-si + SI (bf16 training) | 2 | 33.0 | 30.0-36.0 | 1300 |" in text
    assert "optimum-si is 1.91x faster than the reference-structured loop" in text
    assert "SI + wanda takes 2.36x the time of plain wanda" in text
    assert "SI (bf16 training) + wanda takes 1.50x" in text
    assert "peak RSS against the reference loop: plain 1.10x, SI 1.20x, SI (bf16 training) 1.30x" in text
