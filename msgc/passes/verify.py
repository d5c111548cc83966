"""Verify: the grown model at mask 0 must compute what the original model computed, and at
mask 1 (every new path open) it must run and return outputs of the same shapes."""

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
    error = relative_error(expected, _run_grown(grown, example_inputs))
    if not error <= rtol:
        raise PreservationError(
            f"the grown model's output moved at mask 0: relative error {error:.3g} > {rtol:g}. "
            "This is a bug in msgc or an op it misread; please report the model."
        )
    return error


def verify_new_paths(expected, grown: nn.Module, example_inputs: tuple) -> None:
    """Raise PreservationError if the grown model fails, changes shapes or returns
    non-finite values with every mask at 1 (a shape error on a new path surfaces here)."""
    old = grown.mask_value
    grown.set_masks(1.0)
    try:
        actual = _run_grown(grown, example_inputs)
    finally:
        grown.set_masks(old)
    for e, a in zip(torch.utils._pytree.tree_leaves(expected),
                    torch.utils._pytree.tree_leaves(actual), strict=True):
        if isinstance(e, torch.Tensor) and (e.shape != a.shape or not torch.isfinite(a).all()):
            raise PreservationError(
                f"the grown model's output at mask 1 has shape {tuple(a.shape)} where the "
                f"original's has {tuple(e.shape)}, or is not finite. This is a bug in msgc or "
                "an op it misread; please report the model.")


def _run_grown(grown: nn.Module, example_inputs: tuple):
    """The grown model's output; a failure to run is msgc's bug, reported as such."""
    try:
        return run_eval(grown, example_inputs)
    except Exception as err:  # noqa: BLE001 - whatever broke, the grown graph is wrong
        raise PreservationError(
            f"the grown model fails with its masks at {grown.mask_value:g} "
            f"({type(err).__name__}: {err}). This is a bug in msgc or an op it misread; "
            "please report the model.") from err
