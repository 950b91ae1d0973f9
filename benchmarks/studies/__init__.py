"""The experiment specs of `python -m benchmarks.runner`: one folder per study.

A study folder holds `study.json` (the protocol and the rows: what to run), `results.json` (one record per row that
ran: what was measured), `results.md` (the tables made from them), and two small modules: `spec.py`, which writes
`study.json` (`python -m benchmarks.runner <study> --write-spec`), and `render.py`, which turns the records into the
study's tables. `benchmarks/runner.py` owns everything the studies share.
"""
