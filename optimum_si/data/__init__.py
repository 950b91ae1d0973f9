"""Calibration and evaluation text: what users pass as `dataset` (text, files, datasets, token ids), the named and Hub
text sets, and the seeded windows drawn from them. Imports: nothing of the package; torch only where token ids are
made (the command line checks dataset references before loading torch)."""
