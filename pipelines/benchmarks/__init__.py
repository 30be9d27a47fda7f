"""Benchmark suites; each module exposes `run(**options) -> dict` of figures."""
