"""Checkpoints are plain dicts written atomically with torch.save.

last.pt: everything a run needs to continue exactly (model, optimizer, scheduler, scaler,
EMA, epoch, step, best score, history, config, RNG states).
best.pt: what inference needs (config, the weights to predict with, epoch and score).
"""
from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from competition.data import provenance
from competition.model import config as config_lib
from competition.errors import InputError
from competition.files import atomic_path


def save(path: str | Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load(path: str | Path) -> dict:
    """A checkpoint of this package -> its dict (on CPU). Missing, corrupt or foreign -> InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise InputError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise InputError(f"{path}: not a checkpoint of this pipeline (no config or model)")
    return state


def config_of(state: dict, path: str | Path = "checkpoint") -> config_lib.TrainConfig:
    return config_lib.from_saved(state["config"], path)


def model_from(path: str | Path, device: str | torch.device = "cpu"):
    """best.pt or last.pt -> (model in eval mode on `device`, TrainConfig). Loads the EMA
    weights when the run kept them. The encoder's pretrained weights are not needed."""
    return model_and_split(path, device)[:2]


def model_and_split(path: str | Path, device: str | torch.device = "cpu"):
    """model_from's (model, config), and the split the checkpoint records (provenance.py;
    None for one saved before splits were recorded)."""
    from competition.model.networks import from_config

    state = load(path)
    config = config_of(state, path)
    model = from_config(config, encoder_weights="none")
    weights = state.get("ema") or state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:  # another class count, or weights of another model
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise InputError(f"{path}: its weights do not fit {config.arch}/{config.encoder} with "
                         f"4 classes ({detail})") from None
    return model.to(device).eval(), config, state.get(provenance.KEY)


INIT_FIELDS = ("task", "arch", "encoder")  # what --init-from's checkpoint must share with the run
HEAD = "classification_head."  # a segmenter's optional image-level head (cls_weight > 0)


def init_weights(model: torch.nn.Module, path: str | Path, config,
                 split: dict | None = None) -> str:
    """Start `model` (built from TrainConfig `config`) from checkpoint `path`: the weights of
    its EMA where its run kept one, else of its model, bit for bit. Returns one line saying
    what was loaded. Nothing is loaded when anything does not fit (InputError, one line
    naming the checkpoint and what differs):

    - task, arch and encoder must be the checkpoint's (INIT_FIELDS): other ones give other
      weights, or weights of the same shapes that mean something else;
    - every weight must have the checkpoint's shape (another class count shows here);
    - a segmenter's image-level head (cls_weight > 0) may be in one and not the other: a
      head the run does not have is left out, one the checkpoint lacks starts untrained.
    - `split`, the run's record of its fold (provenance.py): the checkpoint must record the
      same fold of the same split of the same dataset, or it trained on this run's
      validation images; a checkpoint that records none is loaded with a warning line.
    Output stride and atrous rates change no weight's shape and may differ."""
    state = load(path)
    source = config_of(state, path)
    warning = provenance.check(path, state.get(provenance.KEY), split) if split else None
    for field in INIT_FIELDS:
        theirs, ours = getattr(source, field), getattr(config, field)
        if theirs != ours:
            raise InputError(f"{path}: a checkpoint of {field} {theirs!r}, this run's is "
                             f"{ours!r}: --init-from needs the same {', '.join(INIT_FIELDS)}")
    ema = bool(state.get("ema"))
    weights = state["ema"] if ema else state["model"]
    current = model.state_dict()
    optional = (lambda key: key.startswith(HEAD)) if config.task == "segment" else (
        lambda key: False)
    left_out = [k for k in weights if k not in current and optional(k)]
    untrained = [k for k in current if k not in weights and optional(k)]
    weights = {k: v for k, v in weights.items() if k not in left_out}
    unexpected = [k for k in weights if k not in current]
    missing = [k for k in current if k not in weights and k not in untrained]
    if unexpected or missing:
        key, more = (unexpected or missing)[0], len(unexpected) + len(missing) - 1
        raise InputError(f"{path}: its weights do not fit {config.arch}/{config.encoder}: "
                         + (f"{key} is not in this run's model" if unexpected else
                            f"it has no {key}") + (f" (and {more} more)" if more else ""))
    for key, value in weights.items():
        if value.shape != current[key].shape:
            raise InputError(f"{path}: its {key} has shape {tuple(value.shape)}, this run's "
                             f"model {tuple(current[key].shape)} (another class count?)")
    model.load_state_dict({**{k: current[k] for k in untrained}, **weights})
    head = (" without its image-level head (this run has none)" if left_out else
            "; the image-level head starts untrained (the checkpoint has none)"
            if untrained else "")
    return ((warning + "\n" if warning else "") +
            f"init: the {'EMA' if ema else 'model'} weights of {path} (epoch "
            f"{state.get('epoch', '?')}){head}")


def rng_state(device: torch.device | None = None) -> dict:
    """This process's generators: CPU torch, Python, numpy, and the CUDA generator of its own
    `device` only (under torchrun each rank saves its own; see train.gather_rng)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": np.random.get_state(legacy=False)}
    state["numpy"]["state"]["key"] = state["numpy"]["state"]["key"].tolist()
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restore what rng_state saved. The CUDA generator goes to this process's `device`; an
    older checkpoint's list of every GPU's state gives its entry for this device, if any."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = dict(numpy_state["state"],
                                key=np.asarray(numpy_state["state"]["key"], np.uint32))
    np.random.set_state(numpy_state)
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    if isinstance(cuda, (list, tuple)):  # before per-rank states: every visible GPU's
        index = device.index or 0
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)
