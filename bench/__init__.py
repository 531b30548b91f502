"""Benchmarks: scripts run as `python bench/NAME.py`; a package only so mypy names
them `bench.NAME` (bench/journal.py would otherwise clash with the journal package)."""
