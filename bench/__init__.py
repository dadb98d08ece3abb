"""Herald's benchmarks: `make bench` (bench.run), the MIME micro-benchmark (bench.mime).

See BENCHMARKS.md for what is measured, how, and the latest results.
"""
