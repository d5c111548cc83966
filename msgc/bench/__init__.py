"""Benchmarks that ship with msgc (`msgc bench kernels`), and the run metadata every
benchmark JSON records (:mod:`msgc.bench.results`)."""
