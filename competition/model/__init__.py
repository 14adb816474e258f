"""Configs and presets, the networks, checkpoints, precision and the checked forward pass."""
