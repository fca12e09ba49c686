"""Benchmarks that print figures (performance is measured here, never in timed tests)."""
