"""What a checkpoint holds, and how a run continues from one exactly.

The payload is plain data (loads with weights_only=True): the loop counters, the model's
and optimizer's state dicts, the mask state, the RNG states and the metrics rows. The
model's *structure* is not pickled: it is rebuilt by replaying the schedule's growth
events (same sizes, same seeds, so the same graph, parameter names and mask buffers),
then the weights are loaded into it. Training batches are a pure function of the step,
so the data position is the step.
"""

import random
from typing import Any

import torch

from msgc.compiler import GrownModule

FORMAT = 1


def capture(state, model, optimizer, scaler) -> dict[str, Any]:
    """The payload of a checkpoint of `state` (a trainer's RunState) after its last step,
    with `model` and `optimizer` its full (unsharded) model and optimizer."""
    return {
        "format": FORMAT,
        "step": state.step,
        "stage": state.stage,
        "ramp_start": state.ramp_start,
        "tokens": state.tokens,
        "flops": state.flops,
        "seconds": state.seconds,
        "grown": isinstance(model, GrownModule),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_states(),
        "metrics": list(state.metrics.rows),
    }


def rng_states() -> dict[str, Any]:
    """The torch (CPU and CUDA) and Python RNG states, for `restore_rng`."""
    states = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(_as_python_state(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_python_state(state):
    """random.setstate wants tuples where a weights_only load may give lists."""
    version, internal, gauss = state
    return version, tuple(internal), gauss
