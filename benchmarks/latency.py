"""Latency, throughput, bytes, CPU and memory per model size, beside the baselines.

Same as `heml bench`. Full run: `.venv/bin/python benchmarks/latency.py`; under two minutes:
`--quick`. Writes bench-results/bench-<time>.json and .png.
"""

import sys

from heml.bench import main

if __name__ == "__main__":
    sys.exit(main())
