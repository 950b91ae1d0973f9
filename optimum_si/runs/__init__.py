"""The runs behind `SIPruner`: the set-up every run shares (checks, plan, device, calibration, walker and stages),
the in-memory run and the streamed run with its output folder's life cycle. Imports everything below it."""
