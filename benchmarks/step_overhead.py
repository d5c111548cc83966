"""Training-step overhead of masks: a grown GPT mid-ramp vs the same model folded.

Grows a gpt2-family model (hidden, heads, FFN, layers all at once, the worst case), sets
the masks to c = 0.5, and times full training steps (forward, backward, AdamW) of:
- the grown model as msgc.grow returns it (masks as separate multiplies),
- the grown model after msgc.fuse (masked ops through msgc.kernels' dispatcher),
- the folded model of the same size (no masks): the baseline.
All three are timed interleaved in one process; the ratios are medians over rounds.

    python benchmarks/step_overhead.py [--json PATH] [--device cpu|cuda]
"""

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

import msgc
from msgc.bench.results import write_result
from msgc.models import build_model

RESULTS = Path(__file__).resolve().parent / "results"


def spec(hidden: int, heads: int, ffn: int, layers: int, vocab: int, seq: int):
    return SimpleNamespace(family="gpt2", vocab_size=vocab, max_seq_len=seq, hidden=hidden,
                           heads=heads, kv_heads=heads, head_dim=64, ffn=ffn, layers=layers,
                           dropout=0.0, tie_embeddings=True, norm_eps=1e-5, activation="gelu",
                           type_vocab_size=2)


def step_timer(model, ids, device):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        start = time.perf_counter()
        logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    vocab, seq, batch = (4096, 128, 8) if cpu else (32768, 1024, 8)
    small = spec(128, 2, 256, 2, vocab, seq) if cpu else spec(512, 8, 2048, 6, vocab, seq)
    target = dict(hidden=2 * small.hidden, heads=2 * small.heads, ffn=4 * small.ffn,
                  layers=2 * small.layers)
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq))
    grown = msgc.grow(build_model(small), (ids[:2],), **target)
    fused = msgc.fuse(copy.deepcopy(grown))
    folded_source = copy.deepcopy(grown)
    folded_source.set_masks(1.0)
    folded = msgc.fold(folded_source)
    for model in (grown, fused):
        model.set_masks(0.5)
    ids = ids.to(device)
    timers = {name: step_timer(model.to(device).train(), ids, device)
              for name, model in (("masked", grown), ("fused", fused), ("folded", folded))}
    for timer in timers.values():  # warm-up
        timer(), timer()
    times = {name: [] for name in timers}
    for _ in range(args.rounds):
        for name, timer in timers.items():
            times[name].append(timer())
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "device": torch.cuda.get_device_name(device) if not cpu else "cpu",
        "model": {"start": vars(small), "grown_to": target, "batch": batch, "seq": seq},
        "median_step_seconds": median,
        "masked_over_folded": median["masked"] / median["folded"],
        "fused_over_folded": median["fused"] / median["folded"],
        "target": "mid-ramp step <= 1.03x the folded model's step",
    }
    for name in ("masked", "fused", "folded"):
        print(f"{name:>7}: {median[name] * 1e3:8.1f} ms/step  "
              f"({median[name] / median['folded']:.3f}x folded)")
    path = args.json or RESULTS / f"step-overhead-{result['device'].replace(' ', '-').lower()}.json"
    write_result(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
