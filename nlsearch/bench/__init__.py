"""Benchmarks: commands that print figures and save them under ``results/bench`` (never tests)."""
