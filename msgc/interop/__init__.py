"""Interop: Hugging Face checkpoints in and out, standalone module emission."""
