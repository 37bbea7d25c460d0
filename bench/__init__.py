"""Benchmarks: Offsite vs a FlowerTune-style baseline, framework overhead, scale and growth (docs/benchmarks.md)."""
