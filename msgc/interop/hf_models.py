"""Hugging Face models in a training run: built locally from a spec, logits out.

A spec's `model: {hf: <model type or folder>, config: {...}, task: causal|masked}` builds
the model without downloading anything: from the model type's config class filled with
`config`, or from a folder written by save_pretrained. `HFLogits` wraps it so the runtime
sees `model(ids) -> logits`, the same as msgc's own families.
"""

from pathlib import Path

import torch
import torch.nn as nn

from msgc.errors import SpecError


class HFLogits(nn.Module):
    """`hf(input_ids=ids).logits`, with the KV cache off."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids).logits  # (B, T, vocab)


def hf_config(spec):
    """The transformers config a spec's `model.hf` section describes."""
    import transformers

    folder = Path(spec.hf)
    try:
        if folder.is_dir():
            config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        else:
            config = transformers.AutoConfig.for_model(spec.hf, **spec.config)
    except (ValueError, OSError, TypeError) as exc:
        raise SpecError(f"model.hf: cannot build a config for {spec.hf!r} ({exc}); give a "
                        "transformers model type (gpt2, llama, bert, ...) or a folder "
                        "written by save_pretrained") from None
    if hasattr(config, "use_cache"):
        config.use_cache = False
    return config


def build_hf_model(spec) -> HFLogits:
    """The spec's Hugging Face model (random init from the config, or the saved weights)."""
    import transformers

    config = hf_config(spec)
    auto = (transformers.AutoModelForMaskedLM if spec.task == "masked"
            else transformers.AutoModelForCausalLM)
    folder = Path(spec.hf)
    try:
        if folder.is_dir():
            model = auto.from_pretrained(folder, config=config, local_files_only=True)
        else:
            model = auto.from_config(config)
    except ValueError as exc:
        raise SpecError(f"model.task: {spec.hf!r} has no {spec.task} LM class ({exc})") from None
    return HFLogits(model)


def hf_vocab_size(spec) -> int:
    return int(hf_config(spec).vocab_size)
