"""Benchmarks: scripts run as `python bench/NAME.py`; a package only so mypy names
them `bench.NAME`. No script may be named after a top-level package (journal,
scanner, vfile): run as a script, bench/ comes first on sys.path and would shadow it."""
