"""The fused LM head + loss in msgc's training step, stage by stage of a spec.

For each stage's architecture (no growth) two Trainers train the same model from the same
seed on the same batches, one with ``train.fused_head: true`` (the head and the loss as
``msgc.train.linear_cross_entropy``), one with it false (logits, then the cross-entropy).
Their ``train_step`` calls are interleaved so machine load hits both alike; the table gives
the median step times, their ratio and the two runs' losses after the last step (the same
run, rounded differently). JSON to benchmarks/results/.

    python benchmarks/fused_head.py [--spec specs/gpt-tiny.yaml] [--steps 20] [--threads 2]
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

from msgc.bench.results import write_result
from msgc.spec import load_spec, parse_spec
from msgc.train.data import prepare_data
from msgc.train.trainer import Trainer

RESULTS = Path(__file__).resolve().parent / "results"
WARMUP = 2


def stage_spec(spec, index: int, arch, fused: bool, steps: int):
    """`spec`'s stage `index` architecture trained alone, its run long enough that `steps`
    steps hold no evaluation."""
    data = spec.to_dict()
    data["name"] = f"{spec.name}-stage{index}-{'fused' if fused else 'plain'}"
    data["model"] = arch.model_dump(mode="json")
    data["growth"] = {**data["growth"], "stages": []}
    data["train"] = {**data["train"], "steps": 10 * steps, "warmup_steps": 0,
                     "eval_every": 10 * steps, "eval_batches": 1, "checkpoint_every": None,
                     "fused_head": fused}
    return parse_spec(data, source=data["name"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=Path("specs/gpt-tiny.yaml"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = load_spec(args.spec)
    tokenizer, data = prepare_data(spec.train.data, spec.train.tokenizer, spec.model.vocab_size)
    result = {"spec": str(args.spec), "threads": args.threads, "steps": args.steps,
              "stages": []}
    for index, (_, arch) in enumerate(spec.stage_archs()):
        trainers = {name: Trainer(stage_spec(spec, index, arch, name == "fused",
                                             args.steps + WARMUP),
                                  tokenizer, data, progress=False)
                    for name in ("plain", "fused")}
        times = {name: [] for name in trainers}
        losses = {}
        for step in range(args.steps + WARMUP):
            for name, trainer in trainers.items():
                start = time.perf_counter()
                losses[name] = trainer.train_step()["loss"]
                if step >= WARMUP:
                    times[name].append(time.perf_counter() - start)
        median = {name: statistics.median(t) for name, t in times.items()}
        row = {"stage": index, "hidden": arch.hidden, "layers": arch.layers,
               "median_step_seconds": median, "fused_over_plain": median["fused"] / median["plain"],
               "last_loss": losses}
        result["stages"].append(row)
        print(f"stage {index} (d={arch.hidden}, {arch.layers} layers): plain "
              f"{median['plain'] * 1e3:6.1f} ms, fused {median['fused'] * 1e3:6.1f} ms "
              f"({row['fused_over_plain']:.2f}x); last loss {losses['plain']:.5f} / "
              f"{losses['fused']:.5f}")
    path = args.json or RESULTS / f"fused-head-{spec.name}-cpu.json"
    write_result(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
