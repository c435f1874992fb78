// Benchmark driver; see scripts/bench.
print("prefect-worker-bench: not implemented yet")
