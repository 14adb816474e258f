"""The checked forward pass: a model's logits under autocast, never NaN passed on.

Mixed precision never passes NaN on: a forward whose logits hold a NaN or an inf (an fp16
overflow, e.g. of weights trained in bf16 run on a T4) is recomputed in fp32
(`forward_checked`), and a model that is non-finite in fp32 too is an error naming its file.
Shared by training's validation (train/) and inference (infer/).
"""
from __future__ import annotations

import sys

import torch

from competition.errors import InputError
from competition.model import devices


def device(wanted: str = "auto") -> torch.device:
    """--device `wanted` (auto | cuda | cpu) -> the first GPU or the CPU (devices.resolve:
    auto takes the GPU when torch can use it and refuses, in one line, an NVIDIA GPU that
    torch cannot use)."""
    return torch.device(devices.resolve(wanted))


class NonFiniteLogits(InputError):
    """A model's logits hold a NaN or an inf in fp32: its weights are broken."""


recomputed = 0  # forwards that forward_checked recomputed in fp32, in this process


def dtype_name(dtype: torch.dtype | None) -> str:
    """torch.float16 -> 'float16'; None -> 'fp32'."""
    return str(dtype).removeprefix("torch.") if dtype else "fp32"


def autocast_forward(model, inputs: torch.Tensor, dtype: torch.dtype | None):
    """model(inputs) under autocast `dtype` (None: autocast disabled, fp32) -> float32: a
    tensor, or a tuple of tensors for a model with an image-level head (model.split_output)."""
    with torch.autocast(inputs.device.type, dtype=dtype, enabled=dtype is not None):
        out = model(inputs)
    return tuple(o.float() for o in out) if isinstance(out, (tuple, list)) else out.float()


def all_finite(out) -> bool:
    """Whether every value of a tensor or a tuple of tensors is finite (one host sync)."""
    parts = out if isinstance(out, tuple) else (out,)
    return bool(torch.stack([torch.isfinite(o).all() for o in parts]).all())


def count_bad(out) -> tuple[int, int]:
    """(non-finite values, all values) of a tensor or a tuple of tensors."""
    parts = out if isinstance(out, tuple) else (out,)
    return (sum(int((~torch.isfinite(o)).sum()) for o in parts),
            sum(o.numel() for o in parts))


def forward_checked(model, inputs: torch.Tensor, dtype: torch.dtype | None):
    """model(inputs) under autocast `dtype` (None: fp32) -> its float32 logits, e.g.
    (N, 3, H, W) normalised images -> (N, 4, H, W) logits (a tuple of tensors for a model
    with an image-level head, (N, 4) for a classifier: model.split_output).

    Logits with a NaN or an inf (an overflow in `dtype`) are recomputed in fp32, autocast
    disabled, for this forward alone: the first time in the process says so on stderr, and
    the module's `recomputed` counts every such forward. Logits that are non-finite in fp32
    too raise NonFiniteLogits (an InputError): a NaN probability exceeds no threshold, so
    passing it on would write a valid, all-empty submission. The check reads one bool back
    from the device: one sync per forward, acceptable in inference (the probabilities go to
    the CPU every batch anyway). Call it under torch.no_grad() for inference."""
    global recomputed
    logits = autocast_forward(model, inputs, dtype)
    if all_finite(logits):
        return logits
    if dtype is not None:
        logits = autocast_forward(model, inputs, None)
        recomputed += 1
        if recomputed == 1:
            print(f"warning: {dtype_name(dtype)} autocast gave non-finite logits (an "
                  "overflow): the batch was recomputed in fp32 (said once; later ones are "
                  "counted)", file=sys.stderr)
        if all_finite(logits):
            return logits
    bad, total = count_bad(logits)
    raise NonFiniteLogits(f"the model produces non-finite logits in fp32{' too' if dtype else ''}"
                          f" ({bad} of {total} values NaN or inf): its weights are "
                          "broken (a diverged run?); retrain it or leave it out")


def model_dtype(config, dtype: torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype a model runs in: None (fp32) where its config says amp "off",
    else `dtype`, the device's own choice (train.amp_dtype("auto", device): bf16 from
    Ampere on, fp16 on a T4, None on the CPU) whatever the run trained in: a T4 has no
    native bf16, so weights trained in bf16 run in fp16 there (forward_checked catches an
    overflow)."""
    return None if config.amp == "off" else dtype
