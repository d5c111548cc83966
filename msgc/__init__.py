"""msgc: a model-graph compiler for Masked Structural Growth (MSG) of Transformers."""

from msgc.compiler import GrownModule, analyze, fold, fuse, grow
from msgc.errors import (
    CheckpointError,
    DataError,
    GraphError,
    GrowthError,
    MsgcError,
    PreservationError,
    SpecError,
)
from msgc.growth import Growth
from msgc.models import build_model, count_parameters
from msgc.spec import load_spec, parse_spec

__all__ = [
    "CheckpointError",
    "DataError",
    "GraphError",
    "Growth",
    "GrowthError",
    "GrownModule",
    "MsgcError",
    "PreservationError",
    "SpecError",
    "analyze",
    "build_model",
    "count_parameters",
    "fold",
    "fuse",
    "grow",
    "load_spec",
    "parse_spec",
]
__version__ = "0.1.0"
