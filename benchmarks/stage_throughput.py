"""Where a run's wall time goes: seconds per step and FLOP rate of each stage.

Reads the metrics.jsonl of one or more run directories (`msgc train --out`, or the
`scratch/` and `msg/` folders `msgc compare --out` writes) and prints, per run, one row for
each stage's plain steps, one for its ramp steps (masks below 1), and one for the steps
that grew or folded the model. The FLOP rate of a stage against the run's last stage says
how efficiently the smaller models use the machine (small matmuls run slower per FLOP).

    python benchmarks/stage_throughput.py RUN_DIR [RUN_DIR ...] [--json PATH]
"""

import argparse
import itertools
import json
import statistics
from collections import defaultdict
from pathlib import Path

from msgc.bench.results import write_result

EVENT_KEYS = ("grow_seconds", "fold_seconds")


def read_rows(run_dir: Path) -> list[dict]:
    """The run's per-step metrics rows, in step order."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{run_dir}: no metrics.jsonl; pass a directory `msgc train --out` wrote")
    with path.open() as lines:
        return [json.loads(line) for line in lines if line.strip()]


def phase_of(row: dict) -> str:
    """`stage N`, `stage N ramp` or `stage N growth/fold step`."""
    if any(key in row for key in EVENT_KEYS):
        return f"stage {row['stage']} growth/fold step"
    ramping = row["mask"] < 1.0
    return f"stage {row['stage']}{' ramp' if ramping else ''}"


def phases(rows: list[dict]) -> dict[str, dict]:
    """Per phase: steps, seconds, FLOPs, median s/step and GFLOP/s (first step left out:
    it holds start-up)."""
    seconds, flops = defaultdict(list), defaultdict(float)
    for previous, row in itertools.pairwise(rows):
        name = phase_of(row)
        seconds[name].append(row["time"] - previous["time"])
        flops[name] += row["flops"] - previous["flops"]
    total = rows[-1]["time"] - rows[0]["time"]
    return {
        name: {
            "steps": len(times),
            "seconds": sum(times),
            "share_of_wall": sum(times) / total,
            "median_step_seconds": statistics.median(times),
            "gflop_per_second": flops[name] / sum(times) / 1e9,
        }
        for name, times in seconds.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = parser.parse_args()
    report = {}
    for run_dir in args.runs:
        report[str(run_dir)] = table = phases(read_rows(run_dir))
        print(f"{run_dir}")
        print(f"  {'phase':34} {'steps':>5} {'wall %':>7} {'s/step':>7} {'GFLOP/s':>8}")
        for name, phase in table.items():
            print(f"  {name:34} {phase['steps']:5d} {100 * phase['share_of_wall']:6.1f}% "
                  f"{phase['median_step_seconds']:7.3f} {phase['gflop_per_second']:8.1f}")
    if args.json:
        write_result(args.json, report)


if __name__ == "__main__":
    main()
