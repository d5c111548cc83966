"""Hugging Face out: a folded msgc model as a normal `save_pretrained` checkpoint.

The grown sizes come from msgc's own analysis of the folded graph (no per-family size
code); they are written into a copy of the original model's config through the config's
standard names (attribute_map covers GPT-2's n_embd and friends), the HF class is built
from it, the folded weights are loaded by name, and the result is checked against the
folded model's logits before anything is written.
"""

import copy
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn as nn

from msgc.compiler import measured_sizes
from msgc.errors import GrowthError
from msgc.graph.analyze import analyze_graph
from msgc.graph.plan import find_groups
from msgc.graph.trace import propagate_shapes
from msgc.passes.verify import relative_error, run_eval

# config field -> the size msgc measured; the first name a config has is set
CONFIG_FIELDS = {
    "hidden": ("hidden_size",),
    "ffn": ("intermediate_size", "n_inner"),
    "heads": ("num_attention_heads",),
    "kv_heads": ("num_key_value_heads",),
    "layers": ("num_hidden_layers",),
}


def grown_sizes(folded: fx.GraphModule, example_inputs: tuple) -> dict[str, int]:
    """hidden / ffn / heads / kv_heads / layers of a (folded) msgc graph, by analysis."""
    propagate_shapes(folded, example_inputs)
    analysis = analyze_graph(folded)
    return measured_sizes(folded, analysis, find_groups(analysis))


def grown_config(like: nn.Module, sizes: dict[str, int]):
    """A copy of `like.config` with the grown sizes; HF's validators run here."""
    config = copy.deepcopy(like.config)
    for size_name, fields in CONFIG_FIELDS.items():
        if size_name not in sizes:
            continue
        field = next((f for f in fields if _has_field(config, f)), None)
        if field is not None:
            setattr(config, field, sizes[size_name])
    try:
        type(config).from_dict(config.to_dict())  # re-runs the config's validation
    except (ValueError, TypeError) as exc:
        raise GrowthError(f"export_hf: {type(config).__name__} rejects the grown sizes "
                          f"{sizes}: {exc}") from exc
    return config


def _has_field(config, name: str) -> bool:
    return name in getattr(config, "attribute_map", {}) or hasattr(config, name)


def export_hf(folded: fx.GraphModule, like: nn.Module, path: str | Path,
              example_inputs: tuple | None = None, prefix: str = "") -> nn.Module:
    """Build `like`'s HF class at the folded model's sizes, load its weights, save it.

    `prefix`: where the HF model sits in `folded`'s parameter names (e.g. "hf." when it
    was grown inside a wrapper)."""
    if example_inputs is None:  # the inputs it was grown with
        example_inputs = getattr(folded, "example_inputs", None) or (
            torch.randint(0, like.config.vocab_size, (2, 8)),)
    sizes = grown_sizes(folded, example_inputs)
    config = grown_config(like, sizes)
    model = type(like)(config)
    _load_weights(model, folded, prefix)
    _check_logits(model, folded, example_inputs, sizes)
    Path(path).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return model


def _load_weights(model: nn.Module, folded: fx.GraphModule, prefix: str) -> None:
    state = {k[len(prefix):]: v for k, v in folded.state_dict().items()
             if k.startswith(prefix) and not k.startswith("msgc_")}
    expected = model.state_dict()
    for name, value in state.items():
        if name in expected and expected[name].shape != value.shape:
            raise GrowthError(f"export_hf: {name} is {tuple(value.shape)} in the grown model "
                              f"but {tuple(expected[name].shape)} in the HF class; these sizes "
                              "do not fit its config (e.g. head_dim derived from hidden/heads)")
    missing, _ = model.load_state_dict(state, strict=False)
    model.tie_weights()
    tied = {name for name in missing if _is_tied(model, name, state)}
    untouched = [name for name in missing if name not in tied and name in dict(
        model.named_parameters())]
    if untouched:
        raise GrowthError(f"export_hf: the grown model has no weights for {untouched[:5]}")


def _is_tied(model: nn.Module, name: str, state: dict) -> bool:
    params = dict(model.named_parameters(remove_duplicate=False))
    if name not in params:
        return True  # a buffer
    target = params[name]
    return any(other in state and p is target for other, p in params.items() if other != name)


def _check_logits(model: nn.Module, folded: fx.GraphModule, example_inputs, sizes) -> None:
    expected = run_eval(folded, example_inputs)
    actual = run_eval(model, example_inputs)
    expected = _logits(expected)
    error = relative_error(expected, _logits(actual))
    if not error <= 1e-4:
        raise GrowthError(f"export_hf: the {type(model).__name__} built with sizes {sizes} "
                          f"does not reproduce the grown model (relative error {error:.3g})")


def _logits(output):
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)):
        return output[0]
    if isinstance(output, dict):
        return output["logits"]
    return output
