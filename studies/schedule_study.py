"""Schedule study: one spec's MSG schedule in several variants against scratch, by quality.

Each variant is the base spec with some fields changed (learning-rate multipliers, ramp,
final architecture, ...); each runs as its own `msgc train --steps N` process with one
thread, two at a time, so the figures to read are test bits per byte and FLOPs (both
independent of machine load); wall times are printed but shared the machine. The gap is
each run's test bpb against the `scratch` variant's (the spec's final architecture, no
growth) with the same seed. With several `--seeds` every variant runs once per seed
(`train.seed`: init and data order) and the JSON gives each seed's gap, their mean and
their range. JSON to studies/results/schedule-study-<spec>-<steps>.json.

    python studies/schedule_study.py [--spec specs/gpt-tiny.yaml] [--steps 800]
        [--only NAME ...] [--seeds 0 1 2] [--json FILE]
"""

import argparse
import copy
import functools
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from msgc.spec import load_spec
from msgc.train.compare import scratch_spec

RESULTS = Path(__file__).resolve().parent / "results"


def with_lr_scales(scales):
    """A change setting the starting and each stage's learning-rate multiplier."""
    def change(spec):
        spec["growth"]["lr_scale"] = scales[0]
        for stage, scale in zip(spec["growth"]["stages"], scales[1:], strict=True):
            stage["lr_scale"] = scale
    return change


def final_with(**sizes):
    """A change to the model sizes (the scratch variants: another final architecture)."""
    def change(spec):
        spec["model"].update(sizes)
    return change


def scaled_lr(factor):
    """A change multiplying the peak learning rate by `factor`."""
    def change(spec):
        spec["train"]["lr"] *= factor
    return change


LR_SCALES = {  # the starting model's multiplier, then each stage's
    "lr x1": [1.0, 1.0, 1.0, 1.0],
    "lr x2 first stage": [2.0, 1.0, 1.0, 1.0],
    "lr x2/1.5/1.25": [2.0, 1.5, 1.25, 1.0],
    "lr x2/2/1.5": [2.0, 2.0, 1.5, 1.0],
    "lr x2/2/2": [2.0, 2.0, 2.0, 1.0],
    "lr x1.5/1.5/1.5": [1.5, 1.5, 1.5, 1.0],
    "lr x3/3/3": [3.0, 3.0, 3.0, 1.0],
    "lr x3/2/1.5": [3.0, 2.0, 1.5, 1.0],
}


def with_fields(**fields):
    """A change setting fields given as section__name=value (train__lr=2e-3)."""
    def change(spec):
        for key, value in fields.items():
            section, name = key.split("__")
            spec[section][name] = value
    return change


def both(first, second):
    """A change applying two changes."""
    def change(spec):
        first(spec)
        second(spec)
    return change


def with_init(init):
    """A change to the init of new weights."""
    def change(spec):
        spec["growth"]["init"] = init
    return change


def at_fractions(*fractions, ramp_fraction=None):
    """A change moving the stages to these fractions of the run (and the ramp to
    `ramp_fraction` of it, if given)."""
    def change(spec):
        steps = spec["train"]["steps"]
        for stage, fraction in zip(spec["growth"]["stages"], fractions, strict=True):
            stage["step"] = round(fraction * steps)
        if ramp_fraction is not None:
            spec["growth"]["ramp_steps"] = round(ramp_fraction * steps)
    return change


def all_at(fraction):
    """A change growing every size in one event at `fraction` of the run."""
    def change(spec):
        stages = spec["growth"]["stages"]
        merged = {key: value for stage in stages for key, value in stage.items()}
        spec["growth"]["stages"] = [merged | {"step": round(fraction * spec["train"]["steps"])}]
    return change


def timing(fractions, scales=None, init=None, ramp_fraction=None):
    """(name, change) of a variant growing at `fractions` of the run, maybe with lr
    multipliers `scales` (the starting model's, then each stage's), another init, or a
    ramp of `ramp_fraction` of the run."""
    name = "growth at " + "/".join(f"{100 * f:g}" for f in fractions) + "%"
    changes = [at_fractions(*fractions, ramp_fraction=ramp_fraction)]
    if ramp_fraction is not None:
        name += f", ramp {100 * ramp_fraction:g}%"
    if scales is not None:
        name += ", lr x" + "/".join(f"{x:g}" for x in scales[:3])
        changes.append(with_lr_scales(scales))
    if init is not None:
        name += f", init {init}"
        changes.append(with_init(init))
    return name, functools.reduce(both, changes)


LATER = [(0.30, 0.50, 0.70), (0.35, 0.60, 0.80), (0.40, 0.65, 0.85), (0.40, 0.68, 0.88),
         (0.42, 0.66, 0.86)]  # the spec used to grow at 15 / 30 / 50%
HIGHER_RATES = ([1.5, 1.5, 1.25, 1.0], [2.0, 2.0, 1.5, 1.0])  # for the smaller stages
TIMED = (
    [timing(f, init=init) for f in [*LATER, (0.45, 0.70, 0.88)] for init in (None, "match")]
    + [timing(f, s, init) for f in LATER for s in HIGHER_RATES for init in (None, "match")]
    + [timing((0.40, 0.65, 0.85), ramp_fraction=0.025)]
    + [timing((0.42, 0.66, 0.86), s)  # around the 2.2x point
       for s in ([1.25, 1.25, 1.1, 1.0], [1.75, 1.75, 1.25, 1.0], [1.5, 1.5, 1.5, 1.0])]
    + [timing((0.38, 0.66, 0.86), [1.5, 1.5, 1.25, 1.0])]
)
TIMINGS = dict(TIMED) | {"all at 60%": all_at(0.60), "all at 68%": all_at(0.68)}


# The three-seed study around the spec (base lr 3e-3, the smaller stages at 1.25x, warmup
# 15%): the base rate and warmup of the schedule before it, and other multipliers.
OLD_BASE = {"train__lr": 2e-3}
SEED_STUDY = {
    "scratch, lr 2e-3": OLD_BASE,
    "scratch, lr 4e-3": {"train__lr": 4e-3},
    "scratch, lr 2e-3, warmup 5%": OLD_BASE | {"train__warmup_steps": 100},
    "lr 2e-3, warmup 5%, lr x1.5": OLD_BASE | {"train__warmup_steps": 100,
                                               "growth__lr_scale": 1.5},
    **{f"lr 2e-3, lr x{scale:g}": OLD_BASE | {"growth__lr_scale": scale}
       for scale in (1.5, 1.75, 2.0, 2.5, 3.0)},
    "lr x1.5": {"growth__lr_scale": 1.5},
}


def half_ramp(spec):
    """A change to one learning rate throughout and half the ramp."""
    with_lr_scales(LR_SCALES["lr x1"])(spec)
    spec["growth"]["ramp_steps"] //= 2


VARIANTS = {
    "scratch": ("the final architecture from scratch", None),
    "spec": ("MSG, the spec as it is", None),
    "scratch-2-layers": ("final width, FFN, heads, but 2 layers, from scratch",
                         final_with(layers=2)),
    **{f"scratch-lr-x{factor:g}": (f"the final architecture from scratch at {factor:g}x the lr",
                                   scaled_lr(factor)) for factor in (0.5, 1.5, 2.0)},
    **{name: (f"MSG, lr multipliers {scales}", with_lr_scales(scales))
       for name, scales in LR_SCALES.items()},
    "ramp / 2": ("MSG, lr x1, half the ramp", half_ramp),
    **{name: (f"{'' if name.startswith('scratch') else 'MSG, '}{name}", with_fields(**fields))
       for name, fields in SEED_STUDY.items()},
    "lr 2e-3, lr x1.75, growth at 44/68/88%": (
        "MSG, lr 2e-3, lr x1.75, growth at 44/68/88%",
        both(with_fields(**OLD_BASE, growth__lr_scale=1.75), at_fractions(0.44, 0.68, 0.88))),
    "lr x1, init match": ("MSG, lr x1, init match", both(with_lr_scales(LR_SCALES["lr x1"]),
                                                          with_init("match"))),
    **{name: (f"MSG, {name}", change) for name, change in TIMINGS.items()},
}


def variant_spec(base, name, seed):
    """The spec dict of variant `name` with `train.seed` = `seed`."""
    _, change = VARIANTS[name]
    if name.startswith("scratch"):
        spec = scratch_spec(base).to_dict()
    else:
        spec = base.to_dict()
    spec = copy.deepcopy(spec)
    if change is not None:
        change(spec)
    spec["train"]["seed"] = seed
    spec["name"] = f"{name}-seed{seed}".replace(" ", "_").replace("/", "-")
    return spec


def train(spec, steps, workdir):
    """Run `msgc train` on `spec` in a one-thread subprocess; its summary.json."""
    path = Path(workdir) / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = Path(workdir) / spec["name"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "msgc", "train", str(path), "--out", str(out),
                           "--steps", str(steps)], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{spec['name']} failed:\n{done.stderr[-2000:]}")
    return json.loads((out / "summary.json").read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=Path("specs/gpt-tiny.yaml"))
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), default=sorted(VARIANTS),
                        metavar="NAME", help="variants to run (default: all): %(choices)s")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="train.seed values; every variant runs once per seed")
    parser.add_argument("--json", type=Path, help="where to write the results (default: "
                        "studies/results/schedule-study-<spec>-<steps>.json)")
    args = parser.parse_args()
    base = load_spec(args.spec)
    names = sorted(set(args.only) | {"scratch"})
    jobs = [(name, seed) for name in names for seed in args.seeds]
    with tempfile.TemporaryDirectory() as workdir, ThreadPoolExecutor(2) as pool:
        summaries = dict(zip(jobs, pool.map(
            lambda job: train(variant_spec(base, *job), args.steps, workdir), jobs), strict=True))
    runs = {name: variant_figures(name, summaries, args.seeds) for name in names}
    for name, run in runs.items():
        gaps = " ".join(f"{100 * by_seed['bpb_gap']:+.2f}%" for by_seed in run["by_seed"].values())
        print(f"{name:40s} FLOPs x{run['speedup_flops']:.2f}  "
              f"gap mean {100 * run['bpb_gap_mean']:+.2f}%  by seed {gaps}")
    path = args.json or RESULTS / f"schedule-study-{base.name}-{args.steps}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"spec": base.name, "steps": args.steps, "seeds": args.seeds,
                                "runs": runs}, indent=2) + "\n")
    print(f"wrote {path}")


def variant_figures(name, summaries, seeds):
    """Variant `name`'s runs by seed, each with its gap to scratch of the same seed, and
    the gap's mean and range over the seeds."""
    by_seed = {}
    for seed in seeds:
        summary, reference = summaries[name, seed], summaries["scratch", seed]
        by_seed[seed] = {**summary, "bpb_gap": summary["test_bpb"] / reference["test_bpb"] - 1}
    gaps = [run["bpb_gap"] for run in by_seed.values()]
    return {"what": VARIANTS[name][0],
            "speedup_flops": summaries["scratch", seeds[0]]["flops"] / by_seed[seeds[0]]["flops"],
            "bpb_gap_mean": sum(gaps) / len(gaps), "bpb_gap_min": min(gaps),
            "bpb_gap_max": max(gaps), "by_seed": by_seed}


if __name__ == "__main__":
    main()
