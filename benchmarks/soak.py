"""Soak test: train a growth schedule while SIGKILLing it at random moments, then compare.

Trains a tiny gpt2-family spec (byte tokenizer, a slice of the built-in Shakespeare
corpus in a temporary text file, three growth stages, a checkpoint after every step) with
``python -m msgc train SPEC --out DIR`` once without interruption (the reference), then
again in the same way but killed with SIGKILL ``--kills`` times at random moments and
resumed each time with ``python -m msgc train SPEC --resume DIR``; after the last kill the
run is resumed to its end. Finally the metrics of every step (losses, learning rates,
masks, evaluations; wall times excluded) and the final weights (model.safetensors) are
compared with the reference, bitwise.

Kill moments come from a seeded RNG. Some kills land while a process starts up (imports,
data, checkpoint loading, replaying the growth structure); the others land a random time
after training resumed, in windows sized so the kills spread over the whole schedule: before,
at and after growth events, mid-ramp, at folds, during checkpoint writes (a temporary file
left behind shows one was interrupted) and during metrics appends.

    python benchmarks/soak.py [--kills N] [--seed S] [--steps N] [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

import msgc
from msgc.bench.results import write_result
from msgc.train.corpus import load_corpus

RESULTS = Path(__file__).resolve().parent / "results"
VOLATILE_SUFFIX = "_seconds"  # wall-clock fields (grow, wrap, fold): differ from run to run
POLL = 0.005  # seconds between looks at the run directory
STARTUP_KILL_SHARE = 0.2  # fraction of kills aimed at process start-up


def make_spec(data: Path, steps: int) -> dict[str, Any]:
    """Three growth stages spread over `steps` (width+heads, ffn+depth, width+heads)."""
    ramp = max(2, steps // 10)
    stages = [
        {"step": steps // 5, "hidden": 48, "heads": 3},
        {"step": (steps * 9) // 20, "ffn": 128, "layers": 3},
        {"step": (steps * 7) // 10, "hidden": 64, "heads": 4},
    ]
    return {
        "name": "soak",
        "model": {"family": "gpt2", "vocab_size": 260, "max_seq_len": 64, "hidden": 32,
                  "heads": 2, "head_dim": 16, "ffn": 64, "layers": 2, "dropout": 0.1},
        "growth": {"ramp_steps": ramp, "stages": stages},
        "train": {"steps": steps, "batch_size": 8, "seq_len": 64, "warmup_steps": 5,
                  "eval_every": 25, "eval_batches": 2, "tokenizer": "byte", "data": str(data),
                  "checkpoint_every": 1, "keep_checkpoints": 2, "device": "cpu"},
    }


def metrics_rows(run_dir: Path) -> int:
    """Complete lines in metrics.jsonl (a partial last line is not counted)."""
    path = run_dir / "metrics.jsonl"
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    with (run_dir / "metrics.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def newest_checkpoint(run_dir: Path) -> int | None:
    folder = run_dir / "checkpoints"
    steps = [int(p.stem[5:]) for p in folder.glob("ckpt-*.json")] if folder.is_dir() else []
    return max(steps, default=None)


class Runner:
    """Launches `python -m msgc train` on one spec with a private cache and thread count."""

    def __init__(self, spec_path: Path, work: Path, threads: int) -> None:
        self.spec_path = spec_path
        self.logs = work / "logs"
        self.logs.mkdir()
        self.env = dict(os.environ, MSGC_CACHE=str(work / "cache"),
                        OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                        PYTHONHASHSEED="0")
        self.launches = 0

    def start(self, run_dir: Path, resume: bool) -> subprocess.Popen:
        self.launches += 1
        flag = "--resume" if resume else "--out"
        log = (self.logs / f"launch-{self.launches:03d}.log").open("wb")
        command = [sys.executable, "-m", "msgc", "train", str(self.spec_path), flag, str(run_dir)]
        process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        process.log_path = self.logs / f"launch-{self.launches:03d}.log"  # type: ignore[attr-defined]
        log.close()
        return process

    def finish(self, process: subprocess.Popen) -> None:
        if process.wait() != 0:
            tail = process.log_path.read_text(errors="replace")[-2000:]  # type: ignore[attr-defined]
            raise SystemExit(f"msgc train exited with {process.returncode}:\n{tail}")


def reference_run(runner: Runner, run_dir: Path) -> dict[str, float]:
    """The uninterrupted run; its start-up time and seconds per step (checkpoints included)."""
    start = time.monotonic()
    process = runner.start(run_dir, resume=False)
    first_row = None
    while process.poll() is None:
        if first_row is None and metrics_rows(run_dir) > 0:
            first_row = time.monotonic()
        time.sleep(POLL)
    runner.finish(process)
    end = time.monotonic()
    first_row = first_row or end
    steps = metrics_rows(run_dir)
    return {"seconds": end - start, "startup": first_row - start,
            "per_step": (end - first_row) / max(1, steps - 1)}


def kill_once(runner: Runner, run_dir: Path, rng: random.Random, startup: float,
              window: float) -> dict[str, Any]:
    """Launch a resume (or the first run), SIGKILL it at a random moment; what was hit."""
    resume = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
    resumed_from = newest_checkpoint(run_dir) or 0
    temporaries_before = temporaries(run_dir)
    in_startup = rng.random() < STARTUP_KILL_SHARE
    delay = rng.uniform(0.0, startup) if in_startup else rng.uniform(0.0, window)
    launched, launched_wall = time.monotonic(), time.time()
    process = runner.start(run_dir, resume=resume)
    first_row = None
    if in_startup:
        target = launched + delay
    else:  # a random time after this process has written its first new metrics row
        target = None
        while process.poll() is None and target is None:
            if new_row_written(run_dir, resumed_from, launched_wall):
                first_row = time.monotonic()
                target = first_row + delay
            else:
                time.sleep(POLL)
    while process.poll() is None and time.monotonic() < (target or 0):
        time.sleep(min(POLL, max(0.0, (target or 0) - time.monotonic())))
    exited_by_itself = process.poll() is not None
    if exited_by_itself:
        runner.finish(process)  # a failed run stops the soak with its output
    else:
        process.send_signal(signal.SIGKILL)
    process.wait()
    killed = time.monotonic()
    log = process.log_path.read_text(errors="replace")  # type: ignore[attr-defined]
    metrics_path = run_dir / "metrics.jsonl"
    partial_line = (metrics_path.exists() and metrics_path.stat().st_size > 0
                    and not metrics_path.read_bytes().endswith(b"\n"))
    return {
        "launch": runner.launches,
        "resumed_from": resumed_from if resume else None,
        "phase": "startup" if in_startup else "training",
        "delay_s": round(delay, 4),
        "alive_s": round(killed - launched, 3),
        "startup_s": None if first_row is None else round(first_row - launched, 3),
        "killed": not exited_by_itself,
        "exit_code": process.returncode,
        "rows_at_kill": metrics_rows(run_dir),
        "newest_checkpoint_after": newest_checkpoint(run_dir),
        "checkpoint_write_interrupted": sorted(
            name for name, mtime in temporaries(run_dir).items()
            if temporaries_before.get(name) != mtime),
        "partial_metrics_line": partial_line,
        "skipped_checkpoints": log.count("warning: skipping checkpoint"),
        "started_over": "starting from step 0" in log,
    }


def temporaries(run_dir: Path) -> dict[str, int]:
    """Temporary checkpoint files (left by an interrupted write) and their mtimes."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return {}
    return {p.name: p.stat().st_mtime_ns for p in folder.glob(".*.tmp")}


def new_row_written(run_dir: Path, resumed_from: int, since: float) -> bool:
    """Whether metrics.jsonl holds a row beyond the checkpoint, written after `since`.

    A resume first rewrites the file with the checkpoint's rows, then appends one per step.
    """
    path = run_dir / "metrics.jsonl"
    try:
        return path.stat().st_mtime >= since and metrics_rows(run_dir) > resumed_from
    except FileNotFoundError:
        return False


def schedule_phase(step: int, stages: list[int], ramp: int) -> str:
    """Where `step` sits in the growth schedule: growth, ramp, fold or plain."""
    for start in stages:
        if step == start:
            return "growth"
        if start < step < start + ramp:
            return "ramp"
        if step == start + ramp:
            return "fold"
    return "plain"


def msgc_source() -> dict[str, Any]:
    """The git commit of the msgc being soaked, and whether its tracked files differ from it."""
    root = Path(msgc.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], check=True, capture_output=True,
                               text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "modified": None}
    return {"commit": commit, "modified": bool(dirty)}



def _without_wall_times(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row without its wall-clock fields (``time`` and every ``*_seconds``)."""
    return {k: v for k, v in row.items() if k != "time" and not k.endswith(VOLATILE_SUFFIX)}

def compare(reference: Path, soaked: Path) -> dict[str, Any]:
    """Bitwise comparison of the two runs' metrics and final weights."""
    ref_rows, rows = read_rows(reference), read_rows(soaked)
    steps_ok = [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    losses = steps_ok and [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    strip = [_without_wall_times(r) for r in rows]
    ref_strip = [_without_wall_times(r) for r in ref_rows]
    first_diff = next((r["step"] for r, s in zip(ref_strip, strip, strict=False) if r != s), None)
    ref_weights = load_file(reference / "model.safetensors")
    weights = load_file(soaked / "model.safetensors")
    same_keys = ref_weights.keys() == weights.keys()
    tensors_equal = same_keys and all(
        ref_weights[k].dtype == weights[k].dtype and ref_weights[k].shape == weights[k].shape
        and torch.equal(ref_weights[k], weights[k]) for k in ref_weights)
    max_abs_diff = 0.0
    if same_keys and not tensors_equal:
        max_abs_diff = max(float((ref_weights[k].float() - weights[k].float()).abs().max())
                           for k in ref_weights if ref_weights[k].shape == weights[k].shape)
    digest = [hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
              for d in (reference, soaked)]
    return {
        "rows": len(rows), "reference_rows": len(ref_rows), "steps_complete": steps_ok,
        "losses_bitwise_equal": bool(losses),
        "metrics_equal_except_wall_times": strip == ref_strip,
        "first_differing_step": first_diff,
        "weights_bitwise_equal": bool(tensors_equal),
        "weights_file_identical": digest[0] == digest[1],
        "weights_max_abs_diff": max_abs_diff,
        "parameter_tensors": len(ref_weights),
        "final_loss": rows[-1]["loss"] if rows else None,
        "final_val_loss": rows[-1].get("val_loss") if rows else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=40, help="SIGKILLs before the final resume")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--steps", type=int, default=100, help="training steps of the spec")
    parser.add_argument("--data-bytes", type=int, default=300_000,
                        help="characters of the built-in corpus in the training file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--json", type=Path, default=RESULTS / "soak.json")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the run directories here instead of a temporary folder")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    begin = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="msgc-soak-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = work / "plays.txt"
        data.write_text(load_corpus("shakespeare")["train"][: args.data_bytes], encoding="utf-8")
        spec = make_spec(data, args.steps)
        spec_path = work / "soak.yaml"
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        runner = Runner(spec_path, work, args.threads)

        print(f"reference run ({args.steps} steps)...", file=sys.stderr)
        ref = reference_run(runner, work / "reference")
        print(f"  {ref['seconds']:.1f} s (start-up {ref['startup']:.1f} s, "
              f"{ref['per_step'] * 1000:.0f} ms/step)", file=sys.stderr)

        soak_start = time.monotonic()
        run_dir = work / "soaked"
        kills: list[dict[str, Any]] = []
        startup = ref["startup"]
        while len(kills) < args.kills:
            remaining_steps = args.steps - (newest_checkpoint(run_dir) or 0)
            remaining_kills = args.kills - len(kills)
            # training-phase windows sized so that the kills spread over the remaining steps
            window = 2 * ref["per_step"] * max(1.0, remaining_steps) / (remaining_kills + 1)
            record = kill_once(runner, run_dir, rng, startup, window)
            kills.append(record)
            startup = record["startup_s"] or startup  # resumes replay growth: slower start
            print(f"  kill {len(kills):2d}: {record['phase']:8s} after {record['alive_s']:6.2f} s, "
                  f"resumed from {record['resumed_from']}, rows {record['rows_at_kill']}, "
                  f"newest checkpoint {record['newest_checkpoint_after']}"
                  + (f", interrupted write {record['checkpoint_write_interrupted']}"
                     if record["checkpoint_write_interrupted"] else ""), file=sys.stderr)
            if not record["killed"]:
                print("  (the run ended before its kill)", file=sys.stderr)
                break
        final = runner.start(run_dir, resume=True)
        runner.finish(final)
        soak_seconds = time.monotonic() - soak_start
        result = compare(work / "reference", run_dir)

    landed = [k for k in kills if k["killed"]]
    growth_steps, ramp = [s["step"] for s in spec["growth"]["stages"]], spec["growth"]["ramp_steps"]
    for k in landed:  # the step under way (trained, or its row written but not checkpointed)
        k["schedule"] = ("startup" if k["phase"] == "startup"
                         else schedule_phase(k["rows_at_kill"], growth_steps, ramp))
    steps_hit = sorted({k["rows_at_kill"] for k in landed if k["phase"] == "training"})
    stages = spec["growth"]["stages"]
    summary = {
        "benchmark": "soak: SIGKILL at random moments + resume vs an uninterrupted run (CPU)",
        "seed": args.seed,
        "kills_requested": args.kills,
        "kills": len(landed),
        "kills_survived": len(landed) if result["losses_bitwise_equal"]
        and result["weights_bitwise_equal"] else 0,
        "passed": result["losses_bitwise_equal"] and result["weights_bitwise_equal"]
        and result["metrics_equal_except_wall_times"],
        **result,
        "kills_in_startup": sum(k["phase"] == "startup" for k in landed),
        "kills_in_training": sum(k["phase"] == "training" for k in landed),
        "kills_during_checkpoint_write": sum(bool(k["checkpoint_write_interrupted"])
                                             for k in landed),
        "kills_leaving_partial_metrics_line": sum(k["partial_metrics_line"] for k in landed),
        "resumes_that_skipped_a_checkpoint": sum(k["skipped_checkpoints"] > 0 for k in kills),
        "distinct_steps_killed_in_training": len(steps_hit),
        "kills_by_schedule_phase": {phase: sum(k["schedule"] == phase for k in landed)
                                    for phase in ("startup", "plain", "growth", "ramp", "fold")},
        "launches": runner.launches,
        "steps": args.steps,
        "growth_steps": [s["step"] for s in stages],
        "ramp_steps": spec["growth"]["ramp_steps"],
        "reference_seconds": round(ref["seconds"], 2),
        "soak_seconds": round(soak_seconds, 2),
        "total_seconds": round(time.monotonic() - begin, 2),
        "spec": {k: v for k, v in spec.items() if k != "train"}
        | {"train": {k: v for k, v in spec["train"].items() if k != "data"}
           | {"data": f"{args.data_bytes} characters of the built-in shakespeare corpus"}},
        "threads": args.threads,
        "msgc": msgc_source(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "kill_log": kills,
    }
    write_result(args.json, summary)
    print(f"{summary['kills']} kills ({summary['kills_in_startup']} in start-up, "
          f"{summary['kills_during_checkpoint_write']} during a checkpoint write), "
          f"losses bitwise equal: {result['losses_bitwise_equal']}, weights bitwise equal: "
          f"{result['weights_bitwise_equal']}, {summary['total_seconds']:.0f} s; "
          f"written to {args.json}", file=sys.stderr)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
