"""Benchmark commands: ``python -m py4dstem_transformer.benchmarks.<name>``; each prints its figures."""
