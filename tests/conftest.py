"""Test set-up. TRITON_INTERPRET must be set before any Triton kernel is decorated."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

torch.set_num_threads(2)
