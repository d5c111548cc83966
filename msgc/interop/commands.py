"""The `msgc export` and `msgc compile` commands."""

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_model

from msgc.errors import SpecError
from msgc.graph.trace import to_ir
from msgc.interop.emit import emit_module
from msgc.interop.families import export_family
from msgc.models import build_model
from msgc.spec import FamilyModelSpec, load_spec


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
    stages = spec.stage_archs()
    if not 0 <= args.stage < len(stages):
        raise SpecError(f"--stage: the spec has stages 0..{len(stages) - 1} (0 is the start)")
    step, arch = stages[args.stage]
    if not isinstance(arch, FamilyModelSpec):
        raise SpecError("compile: only reference-family specs (model.family) can be compiled")
    if args.from_run is not None:
        model, trained = load_run_model(args.from_run)
        if trained != arch:
            raise SpecError(f"--from: {args.from_run} holds a model of another architecture "
                            f"than stage {args.stage} of {args.spec}")
    else:
        torch.manual_seed(spec.train.seed)
        model = build_model(arch).eval()
    example = torch.randint(0, arch.vocab_size, (2, min(8, arch.max_seq_len)))
    path = emit_module(to_ir(model, (example,)), args.out, class_name=_class_name(spec.name),
                       title=f"{spec.name}, stage {args.stage} (from step {step}).")
    print(f"wrote {path} and {args.out / 'weights.safetensors'}")
    return 0


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
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--from", dest="from_run", type=Path, metavar="RUN_DIR",
                        help="take the weights of a finished run of that architecture")
    parser.set_defaults(handler=cmd_compile)
