"""Does a run's step time depend on its place in the process? (msgc compare runs scratch first.)

Two fresh Trainers of a spec's final architecture from scratch, A then B, in one process,
alternating blocks of steps: A, B, A, B. If the first block of the process is slower than
the rest while the model is the same, `msgc compare`'s scratch arm (which runs first) pays
for it. Prints the median step time of each block; JSON to studies/results/.

    python studies/run_order.py [--spec specs/gpt-tiny.yaml] [--block 40] [--rounds 2]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

from msgc.cli import _spec_with_steps
from msgc.spec import load_spec
from msgc.train.compare import scratch_spec
from msgc.train.data import prepare_data
from msgc.train.trainer import Trainer

RESULTS = Path(__file__).resolve().parent / "results"


def block_median(trainer: Trainer, steps: int) -> float:
    """Median seconds per step over the trainer's next `steps` steps."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=Path("specs/gpt-tiny.yaml"))
    parser.add_argument("--block", type=int, default=40, help="steps per block")
    parser.add_argument("--rounds", type=int, default=2, help="blocks per trainer")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    spec = scratch_spec(_spec_with_steps(load_spec(args.spec), 800))
    tokenizer, data = prepare_data(spec.train.data, spec.train.tokenizer, spec.model.vocab_size)
    trainers = {}
    blocks = []
    for round_ in range(args.rounds):
        for name in ("A", "B"):
            if name not in trainers:  # B is built after A's first block
                trainers[name] = Trainer(spec, tokenizer, data, progress=False)
            seconds = block_median(trainers[name], args.block)
            blocks.append({"trainer": name, "round": round_, "median_step_seconds": seconds})
            print(f"{name}{round_ + 1}: {seconds * 1e3:.0f} ms/step")
    path = args.json or RESULTS / f"run-order-{spec.name}-cpu.json"
    path.write_text(json.dumps({"spec": str(args.spec), "block": args.block,
                                "blocks": blocks}, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
