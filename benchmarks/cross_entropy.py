"""Cross-entropy: msgc.train.cross_entropy against F.cross_entropy, forward + backward.

Times the loss and its backward on (rows, vocab) fp32 logits, interleaved (one torch call,
one msgc call, ...) so machine load hits both alike; reports the medians and their ratio,
and the whole training step of gpt-tiny's starting and final models with each loss.

    python benchmarks/cross_entropy.py [--threads 2] [--rounds 30] [--json PATH]
"""

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from msgc.bench.results import write_result
from msgc.spec import load_spec
from msgc.train.compare import scratch_spec
from msgc.train.cross_entropy import cross_entropy
from msgc.train.models import make_model

RESULTS = Path(__file__).resolve().parent / "results"
LOSSES = {"torch": F.cross_entropy, "msgc": cross_entropy}


def loss_timer(loss_fn, rows: int, vocab: int):
    """A function timing one forward + backward of `loss_fn` on fixed random logits."""
    logits = torch.randn(rows, vocab, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,))

    def run() -> float:
        start = time.perf_counter()
        logits.grad = None
        loss_fn(logits, targets).backward()
        return time.perf_counter() - start
    return run


def step_timer(loss_fn, model, batch: int, seq: int, vocab: int):
    """A function timing one training step (forward, loss, backward, AdamW) of `model`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (batch, seq))  # (B, T)
    targets = torch.randint(0, vocab, (batch * seq,))

    def run() -> float:
        start = time.perf_counter()
        loss_fn(model(ids).flatten(0, 1), targets).backward()  # logits (B*T, V)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start
    return run


def interleaved_medians(timers: dict[str, object], rounds: int, warmup: int = 2) -> dict:
    """Median seconds of each timer over `rounds`, the timers called in turn each round."""
    times = {name: [] for name in timers}
    for round_ in range(warmup + rounds):
        for name, timer in timers.items():
            seconds = timer()
            if round_ >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=Path("specs/gpt-tiny.yaml"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", type=Path, default=RESULTS / "cross-entropy-cpu.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = load_spec(args.spec)
    train, vocab = spec.train, spec.model.vocab_size
    rows = train.batch_size * train.seq_len
    result = {"threads": args.threads, "rounds": args.rounds, "rows": rows, "vocab": vocab}
    cases = {"loss": lambda fn: loss_timer(fn, rows, vocab)}
    for name, model_spec in (("start_step", spec), ("final_step", scratch_spec(spec))):
        model = make_model(model_spec).train()
        cases[name] = lambda fn, m=model: step_timer(fn, m, train.batch_size, train.seq_len,
                                                     vocab)
    for case, make_timer in cases.items():
        medians = interleaved_medians({n: make_timer(fn) for n, fn in LOSSES.items()},
                                      args.rounds)
        result[case] = {"median_seconds": medians,
                        "msgc_over_torch": medians["msgc"] / medians["torch"]}
        print(f"{case:>10}: torch {medians['torch'] * 1e3:7.1f} ms, msgc "
              f"{medians['msgc'] * 1e3:7.1f} ms ({medians['msgc'] / medians['torch']:.2f}x)")
    write_result(args.json, result)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
