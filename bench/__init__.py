"""Benchmarks: each prints a JSON report. Run `python -m bench.backbone --help`."""
