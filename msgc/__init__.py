"""msgc: a model-graph compiler for Masked Structural Growth (MSG) of Transformers."""

from msgc.errors import (
    CheckpointError,
    DataError,
    GraphError,
    GrowthError,
    MsgcError,
    PreservationError,
    SpecError,
)

__all__ = [
    "CheckpointError",
    "DataError",
    "GraphError",
    "GrowthError",
    "MsgcError",
    "PreservationError",
    "SpecError",
]
__version__ = "0.1.0"
