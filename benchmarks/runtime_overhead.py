"""Runtime overhead: msgc's training step against a bare PyTorch loop on the same model.

Both train the spec's final architecture (no growth events) on the same batches with the
same AdamW settings and the same loss (with ``train.fused_head``, the bare loop also trains
the model split before its head, so both run the fused head + loss); the bare loop is
forward, loss, backward, clip, step and nothing else. Steps are timed interleaved (one
trainer step, one bare step, ...) so machine load hits both alike; the overhead is the
ratio of median step times. A torch.profiler table of one trainer step shows where the
time goes. JSON to benchmarks/results/.

    python benchmarks/runtime_overhead.py [--spec specs/gpt-tiny.yaml] [--steps 30]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import profile

from msgc.bench.results import write_result
from msgc.models import build_model
from msgc.spec import load_spec
from msgc.train.compare import scratch_spec
from msgc.train.data import prepare_data
from msgc.train.lm_head import head_split
from msgc.train.optim import build_optimizer
from msgc.train.trainer import Trainer

RESULTS = Path(__file__).resolve().parent / "results"


def bare_step(model, optimizer, task, step, clip):
    start = time.perf_counter()
    inputs, targets = task.train_batch(step)
    loss = task.loss(model, inputs, targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    float(loss)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=Path("specs/gpt-tiny.yaml"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", type=Path, default=RESULTS / "runtime-overhead-cpu.json")
    args = parser.parse_args(argv)
    spec = scratch_spec(load_spec(args.spec))
    spec = spec.model_copy(update={"train": spec.train.model_copy(
        update={"steps": 10 * args.steps, "eval_every": 10 * args.steps})})
    tokenizer, data = prepare_data(spec.train.data, spec.train.tokenizer,
                                   spec.model.vocab_size)
    trainer = Trainer(spec, tokenizer, data, out_dir=None, progress=False)
    torch.manual_seed(0)
    model = build_model(spec.model).train()
    optimizer = build_optimizer(model, spec.train)
    if spec.train.fused_head:  # the same loss as the trainer's
        model = head_split(model, trainer.task.model_inputs(*trainer.task.example_batch(0)))
    timed = {"trainer": [], "bare": []}
    for step in range(args.steps + 3):
        start = time.perf_counter()
        trainer.train_step()
        trainer_seconds = time.perf_counter() - start
        bare_seconds = bare_step(model, optimizer, trainer.task, step, spec.train.grad_clip)
        if step >= 3:  # warm-up
            timed["trainer"].append(trainer_seconds)
            timed["bare"].append(bare_seconds)
    median = {k: statistics.median(v) for k, v in timed.items()}
    with profile() as prof:
        trainer.train_step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    result = {"spec": str(args.spec), "arch": spec.model.model_dump(mode="json"),
              "steps": args.steps, "median_step_seconds": median,
              "overhead": median["trainer"] / median["bare"] - 1,
              "target": "the runtime adds <= 3% to step time beyond the model's compute",
              "profile_top": table.splitlines()[:16]}
    print(table)
    print(f"trainer {median['trainer'] * 1e3:.1f} ms/step, bare loop "
          f"{median['bare'] * 1e3:.1f} ms/step: overhead {result['overhead']:+.1%}")
    write_result(args.json, result)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
