"""Programs for a laptop and CI only: the demo, the benchmark, the Temporal dev server, the paper broker."""
