"""Two CPU processes (torchrun, gloo) against one on gpt-tiny: throughput and growth events.

Runs ``msgc train`` on gpt-tiny's schedule scaled to ``--steps`` optimizer steps (its three
growth events and their folds kept), once in one process and once per ``--modes`` on two
processes under torchrun, with the same global batch (16 x 128 tokens). From each run's
metrics it reports:

- tokens per second of training (evaluation and checkpoints excluded);
- each structure event's wall time: a growth (``grow_seconds``: gather, ``msgc.grow``,
  optimizer state move, re-wrap; ``wrap_seconds``: the re-wrap or re-shard alone) and a fold
  (``fold_seconds``: fold + re-wrap), and their share of the run's training wall time;
- that share projected onto the full 2000-step schedule (the same events over the full
  stages' length, at the measured seconds per step of each stage).

One process runs twice: with torch's default threads (both cores) and with one thread, as
each torchrun rank has. The machine's load average is recorded: on a shared machine the
figures move with it. Writes benchmarks/results/distributed-cpu.json.

    .venv/bin/python benchmarks/distributed.py [--steps 40] [--modes ddp fsdp]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from msgc.bench.results import write_result
from msgc.spec import load_spec
from msgc.train.compare import rescale
from msgc.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "gpt-tiny.yaml"
RESULT = ROOT / "benchmarks" / "results" / "distributed-cpu.json"
EVENT_KEYS = ("grow_seconds", "wrap_seconds", "fold_seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--modes", nargs="*", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--skip-single", action="store_true",
                        help="only the two-process runs (e.g. for a long --steps)")
    args = parser.parse_args()
    full = load_spec(SPEC)
    spec = rescale(full, args.steps / full.train.steps)
    spec = spec.model_copy(update={"train": spec.train.model_copy(update={
        "eval_every": 10 * args.steps, "eval_batches": 1, "checkpoint_every": None})})
    runs = {}
    with tempfile.TemporaryDirectory() as work:
        spec_path = Path(work) / "spec.yaml"
        spec.dump(spec_path)
        single = [("1 process, default threads", None, None), ("1 process, 1 thread", None, 1)]
        configs = [*([] if args.skip_single else single),
                   *[(f"2 processes ({m}), 1 thread each", m, 1) for m in args.modes]]
        for index, (label, mode, threads) in enumerate(configs):
            rows = train(spec_path, Path(work) / f"run-{index}", mode, threads)
            runs[label] = summarize(rows, spec, full)
            print_run(label, runs[label])
            sys.stdout.flush()
    report = {"spec": spec.name, "steps": spec.train.steps, "full_steps": full.train.steps,
              "tokens_per_step": spec.train.batch_size * spec.train.seq_len,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                         f"torch {torch.__version__}, gloo",
              "load_average_at_end": os.getloadavg(), "runs": runs}
    write_result(args.out, report)
    print(f"wrote {args.out}")


def train(spec_path: Path, run_dir: Path, mode: str | None, threads: int | None
          ) -> dict[str, Any]:
    """Run ``msgc train`` (two torchrun processes under `mode`, `threads` threads each, or
    torch's default); its rows and wall time."""
    msgc = ["-m", "msgc", "train", str(spec_path), "--out", str(run_dir)]
    if mode is None:
        command = [sys.executable, *msgc]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node", "2", *msgc, "--distributed", mode]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return {"rows": read_metrics(run_dir / "metrics.jsonl"),
            "process_seconds": time.perf_counter() - start}


def summarize(run: dict[str, Any], spec, full) -> dict[str, Any]:
    """Throughput, the structure events and their share of the training wall time."""
    rows = run["rows"]
    seconds = rows[-1]["time"]
    events = [{"step": row["step"], **{k: row[k] for k in EVENT_KEYS if k in row}}
              for row in rows if any(k in row for k in EVENT_KEYS)]
    event_seconds = sum(e.get("grow_seconds", 0.0) + e.get("fold_seconds", 0.0)
                        for e in events)
    growth_seconds = sum(e.get("grow_seconds", 0.0) for e in events)
    projected = projected_seconds(rows, spec, full)
    return {
        "train_seconds": seconds,
        "process_seconds": run["process_seconds"],
        "tokens_per_second": rows[-1]["tokens"] / seconds,
        "events": events,
        "growth_seconds": growth_seconds,
        "event_seconds": event_seconds,
        "growth_share": growth_seconds / seconds,
        "event_share": event_seconds / seconds,
        "projected_full_seconds": projected,
        "projected_growth_share": growth_seconds / projected,
        "projected_event_share": event_seconds / projected,
    }


def projected_seconds(rows: list[dict[str, Any]], spec, full) -> float:
    """The full schedule's training wall time: each stage's full length at the seconds per
    step measured in that stage (steps with a structure event left out of the mean)."""
    times = [row["time"] for row in rows]
    steps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    per_stage: dict[int, list[float]] = {}
    for row, step_seconds in zip(rows, steps, strict=True):
        if not any(k in row for k in EVENT_KEYS):
            per_stage.setdefault(spec.stage_index_at(row["step"]), []).append(step_seconds)
    starts = [step for step, _ in full.stage_archs()]
    lengths = [b - a for a, b in zip(starts, [*starts[1:], full.train.steps], strict=True)]
    means = [sorted(per_stage[i])[len(per_stage[i]) // 2] for i in range(len(lengths))]
    return sum(mean * length for mean, length in zip(means, lengths, strict=True))


def print_run(label: str, run: dict[str, Any]) -> None:
    """One run's figures as a few lines."""
    print(f"{label}: {run['tokens_per_second']:.0f} tokens/s, training {run['train_seconds']:.1f} s"
          f" (process {run['process_seconds']:.1f} s)")
    for event in run["events"]:
        figures = ", ".join(f"{k} {v:.3f}" for k, v in event.items() if k != "step")
        print(f"  step {event['step']}: {figures}")
    print(f"  growth events {run['growth_seconds']:.2f} s = {run['growth_share']:.2%} of this "
          f"run, {run['projected_growth_share']:.3%} of the full schedule (projected); "
          f"with folds {run['event_share']:.2%} / {run['projected_event_share']:.3%}")


if __name__ == "__main__":
    main()
