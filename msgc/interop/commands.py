"""The `msgc export` and `msgc compile` commands."""

import argparse
import json
from pathlib import Path

import torch
import torch.fx as fx
from safetensors.torch import load_model

import msgc
from msgc.errors import SpecError
from msgc.graph.trace import to_ir
from msgc.interop.emit import emit_module
from msgc.interop.families import export_family
from msgc.models import build_model
from msgc.spec import FamilyModelSpec, Spec, load_spec


def load_run_model(run_dir: Path) -> tuple[torch.nn.Module, FamilyModelSpec]:
    """The final folded model of a finished `msgc train` run and its architecture."""
    weights, arch_file = run_dir / "model.safetensors", run_dir / "model.json"
    if not weights.exists() or not arch_file.exists():
        raise SpecError(f"{run_dir}: no model.safetensors + model.json; is it a finished "
                        "`msgc train` run directory?")
    arch = FamilyModelSpec.model_validate(json.loads(arch_file.read_text()))
    model = build_model(arch)
    load_model(model, str(weights))
    return model.eval(), arch


def cmd_export(args: argparse.Namespace) -> int:
    model, arch = load_run_model(args.run_dir)
    kind = export_family(model, arch, args.hf)
    if kind == "hf":
        print(f"wrote a Hugging Face checkpoint to {args.hf} (from_pretrained loads it)")
    else:
        print(f"the sizes do not fit a Hugging Face {arch.family} config: wrote "
              f"model.safetensors + model.json to {args.hf} (see NOT_HF.txt)")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    mask = args.mask_value if args.masked else None
    gm, step = stage_module(spec, args.stage, args.from_run, mask)
    folder, module, weights = _out_paths(args.out)
    ramp = f", mid-ramp with its masks at {mask:g}" if mask is not None else ""
    path = emit_module(gm, folder, module=module, weights=weights, masked=mask is not None,
                       class_name=_class_name(spec.name),
                       title=f"{spec.name}, stage {args.stage} (from step {step}){ramp}.")
    print(f"wrote {path} and {folder / weights}")
    return 0


def stage_module(spec: Spec, stage: int, from_run: Path | None = None,
                 mask: float | None = None) -> tuple[fx.GraphModule, int]:
    """A stage's model as msgc's graph, and the step it starts at. With `mask`, the stage
    mid-ramp: the previous stage's model grown to it, its masks at `mask`."""
    stages = spec.stage_archs()
    if not 0 <= stage < len(stages):
        raise SpecError(f"--stage: the spec has stages 0..{len(stages) - 1} (0 is the start)")
    if mask is not None and stage == 0:
        raise SpecError("--masked: stage 0 is the starting model and does not ramp; give a "
                        f"stage 1..{len(stages) - 1}")
    base = stage - 1 if mask is not None else stage
    arch = stages[base][1]
    if not isinstance(arch, FamilyModelSpec):
        raise SpecError("compile: only reference-family specs (model.family) can be compiled")
    if from_run is not None:
        model, trained = load_run_model(from_run)
        if trained != arch:
            raise SpecError(f"--from: {from_run} holds a model of another architecture "
                            f"than stage {base} of {spec.name}")
    else:
        torch.manual_seed(spec.train.seed)
        model = build_model(arch).eval()
    example = torch.randint(0, arch.vocab_size, (2, min(8, arch.max_seq_len)))
    if mask is None:
        return to_ir(model, (example,)), stages[stage][0]
    growth = spec.growth
    grown = msgc.grow(model, (example,), **growth.stages[stage - 1].sizes(), init=growth.init,
                      init_std=growth.init_std, seed=spec.train.seed + stage,
                      depth_placement=growth.depth_placement)
    grown.set_masks(mask)
    return grown.eval(), stages[stage][0]


def _out_paths(out: Path) -> tuple[Path, str, str]:
    """(folder, module name, weights file name): FILE.py with FILE.safetensors beside it,
    else a folder with model.py and weights.safetensors."""
    if out.suffix == ".py":
        return out.parent, out.stem, f"{out.stem}.safetensors"
    return out, "model", "weights.safetensors"


def _class_name(name: str) -> str:
    words = "".join(c if c.isalnum() else " " for c in name).split()
    text = "".join(w[:1].upper() + w[1:] for w in words) or "Model"
    return text if text[0].isalpha() else f"Model{text}"


def add_export(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export a run's final model (Hugging Face)")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    parser.add_argument("--hf", type=Path, required=True, metavar="OUT",
                        help="write a save_pretrained checkpoint here")
    parser.set_defaults(handler=cmd_export)


def add_compile(subparsers) -> None:
    parser = subparsers.add_parser("compile",
                                   help="write a stage's model as a standalone Python module")
    parser.add_argument("spec", type=Path, metavar="SPEC")
    parser.add_argument("--stage", type=int, required=True, help="0 = the starting model")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.py|DIR",
                        help="write FILE.py and FILE.safetensors, or DIR/model.py and "
                             "DIR/weights.safetensors")
    parser.add_argument("--from", dest="from_run", type=Path, metavar="RUN_DIR",
                        help="take the weights of a finished run of that architecture")
    parser.add_argument("--masked", action="store_true",
                        help="the stage mid-ramp: the previous stage grown to it, its masks "
                             "as buffers (model.masks.set(c) ramps them)")
    parser.add_argument("--mask-value", type=float, default=0.5, metavar="C",
                        help="with --masked: the masks' value c in [0, 1] (default 0.5)")
    parser.set_defaults(handler=cmd_compile)
