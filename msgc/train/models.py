"""What model a spec trains: msgc's reference families or a Hugging Face model."""

import torch.nn as nn

from msgc.errors import SpecError
from msgc.models import build_model
from msgc.spec import FamilyModelSpec, HFModelSpec, Spec


def make_model(spec: Spec) -> nn.Module:
    """The step-0 model of a spec (callers seed the RNG first)."""
    if isinstance(spec.model, FamilyModelSpec):
        return build_model(spec.model)
    if isinstance(spec.model, HFModelSpec):
        from msgc.interop.hf_models import build_hf_model

        return build_hf_model(spec.model)
    raise SpecError("msgc trains reference families (model.family) and Hugging Face models "
                    "(model.hf); a custom model (model.module) cannot be trained by msgc yet")


def vocab_size(spec: Spec) -> int:
    """The model's vocabulary (the tokenizer is trained to it)."""
    if isinstance(spec.model, HFModelSpec):
        from msgc.interop.hf_models import hf_vocab_size

        return hf_vocab_size(spec.model)
    if isinstance(spec.model, FamilyModelSpec):
        return spec.model.vocab_size
    make_model(spec)  # raises the SpecError for custom models
    raise AssertionError("unreachable")


def is_masked_lm(spec: Spec) -> bool:
    """MLM batches (BERT-like models) instead of next-token prediction."""
    if isinstance(spec.model, HFModelSpec):
        return spec.model.task == "masked"
    return isinstance(spec.model, FamilyModelSpec) and spec.model.family == "bert"
