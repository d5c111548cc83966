"""Benchmark of the masked kernels: `msgc bench kernels` run from a source checkout.

    python benchmarks/kernels.py [--quick] [--sizes 1024,2048] [--tokens M]
                                 [--dtypes bf16,fp32] [--skip IMPLS] [--json PATH]

Same options and table as `msgc bench kernels` (see msgc/bench/kernels.py); the JSON goes
to benchmarks/results/kernels-<device>.json unless --json says otherwise.
"""

import os
import sys
from pathlib import Path

# OpenMP reads this once, when torch loads; msgc.bench.kernels says why it matters.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from msgc.bench.kernels import main  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], results_dir=RESULTS))
