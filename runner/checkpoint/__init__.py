"""Checkpoints: named weights in safetensors, training state, crash-safe storage, the registry."""
