"""Hugging Face models in a training run: built locally from a spec, logits out.

A spec's `model: {hf: <model type or folder>, config: {...}, task: causal|masked}` builds
the model without downloading anything: from the model type's config class filled with
`config`, or from a folder written by save_pretrained. `HFLogits` wraps it so the runtime
sees `model(ids) -> logits`, the same as msgc's own families.
"""

from pathlib import Path

import torch
import torch.nn as nn

from msgc.errors import GrowthError, SpecError


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


def final_hf_section(spec, final_sizes: dict[str, int]) -> dict:
    """The `model` section of a spec for `spec`'s Hugging Face model at its final size, with
    fresh weights (the scratch run of ``msgc compare``).

    Sizes the stages do not name are measured on the starting model (GPT-2's FFN must not
    follow the width). A SpecError if the config cannot express the grown model: its
    parameters must have the shapes of the model grown to `final_sizes`.
    """
    import msgc
    from msgc.graph.trace import to_ir
    from msgc.interop.hf import grown_config, grown_sizes

    with torch.random.fork_rng(devices=[]):
        model = build_hf_model(spec)
        ids = torch.zeros(2, 8, dtype=torch.long)  # (2, 8): any ids measure the sizes
        start_sizes = grown_sizes(to_ir(model, (ids,)), (ids,))
        grown = msgc.grow(model, (ids,), **final_sizes, verify=False)
        try:
            config = grown_config(model.hf, start_sizes | final_sizes)
            fields = {k: v for k, v in config.to_diff_dict().items()
                      if k not in ("model_type", "transformers_version")}
            section = {"hf": config.model_type, "config": fields, "task": spec.task}
            scratch = build_hf_model(type(spec).model_validate(section))
        except GrowthError as exc:
            raise _inexpressible(spec, final_sizes, str(exc)) from None
    if _shapes(scratch) != _shapes(grown):
        raise _inexpressible(spec, final_sizes, "its parameters would have other shapes than "
                             "the grown model's (a config derives sizes from others, e.g. "
                             "GPT-2's and BERT's head size is hidden / heads)")
    return section


def _shapes(model: nn.Module) -> list[tuple[int, ...]]:
    """The sorted shapes of `model`'s parameters (tied ones once)."""
    return sorted(tuple(p.shape) for p in model.parameters())


def _inexpressible(spec, final_sizes: dict[str, int], why: str) -> SpecError:
    return SpecError(
        f"growth.stages: the config of {spec.hf!r} cannot describe the model grown to "
        f"{final_sizes}: {why}; grow the sizes the config ties together (e.g. heads with "
        "hidden, keeping hidden / heads)"
    )
