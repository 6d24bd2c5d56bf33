"""Benchmarks and calibration scripts (not part of the installed package). See docs/BENCHMARKS.md."""
