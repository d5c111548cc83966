"""Verify: the grown model at mask 0 must compute what the original model computed."""

import torch
import torch.nn as nn

from msgc.errors import PreservationError


def run_eval(model: nn.Module, example_inputs: tuple):
    """The model's output on the inputs in eval mode, without grad; the mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(*example_inputs)
    finally:
        model.train(was_training)


def relative_error(expected, actual) -> float:
    """max |a - e| / max |e| over every tensor leaf of the outputs."""
    leaves_e = torch.utils._pytree.tree_leaves(expected)
    leaves_a = torch.utils._pytree.tree_leaves(actual)
    worst = 0.0
    for e, a in zip(leaves_e, leaves_a, strict=True):
        if not isinstance(e, torch.Tensor):
            continue
        e, a = e.double(), a.double()
        if e.shape != a.shape:
            return float("inf")
        scale = e.abs().max().clamp_min(1e-30)
        worst = max(worst, float((a - e).abs().max() / scale))
    return worst


def verify_preservation(expected, grown: nn.Module, example_inputs: tuple,
                        rtol: float = 1e-5) -> float:
    """Raise PreservationError if the grown model's output moved; return the error."""
    error = relative_error(expected, run_eval(grown, example_inputs))
    if not error <= rtol:
        raise PreservationError(
            f"the grown model's output moved at mask 0: relative error {error:.3g} > {rtol:g}. "
            "This is a bug in msgc or an op it misread; please report the model."
        )
    return error
