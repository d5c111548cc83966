"""What model a spec trains: a reference family, a Hugging Face model or a user's own."""

import torch
import torch.nn as nn

from msgc.errors import SpecError
from msgc.models import build_model
from msgc.spec import CustomModelSpec, FamilyModelSpec, HFModelSpec, Spec, load_custom_model


def make_model(spec: Spec) -> nn.Module:
    """The step-0 model of a spec (callers seed the RNG first)."""
    if isinstance(spec.model, FamilyModelSpec):
        return build_model(spec.model)
    if isinstance(spec.model, HFModelSpec):
        from msgc.interop.hf_models import build_hf_model

        return build_hf_model(spec.model)
    return load_custom_model(spec.model)


def vocab_size(spec: Spec) -> int:
    """The model's vocabulary (the tokenizer is trained to it)."""
    if isinstance(spec.model, HFModelSpec):
        from msgc.interop.hf_models import hf_vocab_size

        return hf_vocab_size(spec.model)
    if isinstance(spec.model, FamilyModelSpec):
        return spec.model.vocab_size
    return probe_vocab_size(make_model(spec), spec.model, spec.train.seq_len)


def probe_vocab_size(model: nn.Module, custom: CustomModelSpec, seq_len: int) -> int:
    """V of a custom model that maps token ids (B, T) to logits (B, T, V), from one forward
    pass on a (1, seq_len) batch; a SpecError naming the factory if it does not."""
    ids = torch.zeros(1, seq_len, dtype=torch.long)  # (1, T)
    needs = "msgc trains models that map token ids (B, T) to logits (B, T, V)"
    try:
        with torch.no_grad():
            logits = model.eval()(ids)
    except Exception as exc:  # the user's code: report what it raised, not a deep traceback
        raise SpecError(
            f"model.module: {custom.module} failed on token ids of shape (1, {seq_len}) "
            f"(train.seq_len): {type(exc).__name__}: {exc}; {needs}"
        ) from None
    if not (isinstance(logits, torch.Tensor) and logits.is_floating_point()
            and logits.ndim == 3 and tuple(logits.shape[:2]) == (1, seq_len)):
        got = (f"a tensor of shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor)
               else f"a {type(logits).__name__}")
        raise SpecError(f"model.module: {custom.module} returned {got} for token ids of "
                        f"shape (1, {seq_len}); {needs}")
    return logits.shape[-1]


def is_masked_lm(spec: Spec) -> bool:
    """MLM batches (BERT-like models) instead of next-token prediction."""
    if isinstance(spec.model, FamilyModelSpec):
        return spec.model.family == "bert"
    return spec.model.task == "masked"


def has_masked_head(spec: Spec) -> bool:
    """The model takes the positions to score and runs its MLM head there alone (the
    bert family; see msgc.models.bert.Bert.forward)."""
    return isinstance(spec.model, FamilyModelSpec) and spec.model.family == "bert"
