"""The exceptions a user can cause. The CLI prints them without a traceback and exits 2."""


class MsgcError(Exception):
    """Base of every error that is the user's to fix; the message says what to change."""


class SpecError(MsgcError):
    """A spec file is malformed or inconsistent; the message names the field path."""


class GraphError(MsgcError):
    """The compiler met a graph it cannot rewrite; the message names the node and op."""


class GrowthError(MsgcError):
    """A growth request does not fit the model (sizes, divisibility, unfolded masks)."""


class PreservationError(GrowthError):
    """The grown model's output moved at mask 0 (the verify pass failed)."""


class DataError(MsgcError):
    """Training data is missing, empty or unreadable."""


class CheckpointError(MsgcError):
    """A checkpoint is missing, corrupted, or belongs to another spec."""


class TrainingDivergedError(MsgcError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunDirError(MsgcError):
    """A run directory would be overwritten, or the one to resume does not exist."""
