"""Is MSG's final model as fast as the same architecture trained from scratch?

`msgc compare` found MSG's final stage 2-15% faster per step than scratch on the same
architecture. This separates the model from the machine: it grows a spec to its final size
through a short run of the real schedule (the trainer's grow, ramp and fold), builds
scratch's model, and times training steps (forward and backward through the fused head,
AdamW step) on the same batch, alternating blocks between the two in one process. Equal
medians mean the compare's difference came from the machine drifting over the run, not
from the folded model. JSON to benchmarks/results/.

    python benchmarks/final_model_speed.py [--spec specs/gpt-tiny.yaml] [--block 15] [--rounds 3]
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

from msgc.bench.results import write_result
from msgc.models import count_parameters
from msgc.spec import load_spec
from msgc.train.compare import rescale, scratch_spec
from msgc.train.data import prepare_data
from msgc.train.optim import build_optimizer
from msgc.train.trainer import Trainer

RESULTS = Path(__file__).resolve().parent / "results"
WARMUP_STEPS = 3  # steps at the start of each block left out of its median


def timed_steps(trainer: Trainer, optimizer: torch.optim.Optimizer, batch, steps: int
                ) -> list[float]:
    """Seconds of each of `steps` training steps of the trainer's model on `batch`."""
    inputs, targets = batch
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.task.loss(trainer._wrapper, inputs, targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[WARMUP_STEPS:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=Path("specs/gpt-tiny.yaml"))
    parser.add_argument("--block", type=int, default=15, help="steps per block")
    parser.add_argument("--rounds", type=int, default=3, help="blocks per model")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    spec = rescale(load_spec(args.spec), 0.02)  # the whole schedule in a few dozen steps
    tokenizer, data = prepare_data(spec.train.data, spec.train.tokenizer, spec.model.vocab_size)
    msg = Trainer(spec, tokenizer, data, progress=False)
    msg.run()  # grown, ramped and folded to the final size
    trainers = {"msg": msg, "scratch": Trainer(scratch_spec(spec), tokenizer, data,
                                               progress=False)}
    if len({count_parameters(t.state.model) for t in trainers.values()}) != 1:
        raise SystemExit("the two final models differ in size")
    optimizers = {name: build_optimizer(t.state.model, t.spec.train)
                  for name, t in trainers.items()}
    batch = trainers["scratch"].task.example_batch(0, spec.train.batch_size)
    times = {name: [] for name in trainers}
    for round_ in range(args.rounds):
        order = ("msg", "scratch") if round_ % 2 else ("scratch", "msg")  # each goes first
        for name in order:
            times[name] += timed_steps(trainers[name], optimizers[name], batch, args.block)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in medians.items():
        print(f"{name}: {seconds * 1e3:.1f} ms/step (median of {len(times[name])})")
    print(f"msg / scratch: {medians['msg'] / medians['scratch']:.3f}")
    path = args.json or RESULTS / f"final-model-speed-{load_spec(args.spec).name}-cpu.json"
    write_result(path, {
        "spec": str(args.spec), "block": args.block, "rounds": args.rounds,
        "threads": torch.get_num_threads(), "median_step_seconds": medians,
        "msg_over_scratch": medians["msg"] / medians["scratch"], "step_seconds": times,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
