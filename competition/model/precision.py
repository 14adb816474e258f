"""Mixed precision: the autocast dtype a config's `amp` asks for on a device."""
from __future__ import annotations

import torch


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for config.amp on this device (None: full fp32)."""
    if device.type != "cuda" or amp == "off":
        return None
    # bf16 where the GPU has it natively (Ampere, compute 8.0, and later); Kaggle's T4 and
    # P100 do not, and torch.cuda.is_bf16_supported() would say yes there (emulation)
    if amp == "fp16" or (amp == "auto" and torch.cuda.get_device_capability(device) < (8, 0)):
        return torch.float16
    return torch.bfloat16


PRECISION = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}
