"""ImageNet encoder weights: where the libraries cache them, and whether they can be had now.

smp's encoders download from the Hugging Face Hub (`smp-hub/<encoder>.imagenet` at a pinned
revision: config.json and model.safetensors) into the hub cache (HF_HUB_CACHE, by default
~/.cache/huggingface/hub); timm's (`tu-` encoders) from the Hub too (`timm/<model>.<tag>`);
torchvision's ResNets from download.pytorch.org into torch hub's cache
(`torch.hub.get_dir()/checkpoints`, by default ~/.cache/torch/hub/checkpoints). With no
network, the hub libraries retry for about 30 s before failing, so `unavailable` tells at
once: weights not in the cache are unavailable where HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE)
says the Hub is off, or where a TCP connection to the host (or the https proxy) does not
open within CONNECT_S seconds.
"""
from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

CONNECT_S = 1.5  # the whole reachability check, name lookup included
TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's true values of an environment variable
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass(frozen=True)
class File:
    """One file of a set of weights: `name` in Hugging Face repo `repo` at `revision`
    (None: main), or, where `repo` is "", the download at `url`."""
    repo: str = ""
    name: str = ""
    revision: str | None = None
    url: str = ""

    def host(self) -> str:
        if self.repo:
            from huggingface_hub import constants

            return urlparse(constants.ENDPOINT).hostname or "huggingface.co"
        return urlparse(self.url).hostname or self.url

    def cached(self) -> Path | None:
        """The file in its library's cache, or None when it is not there."""
        if self.repo:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(self.repo, self.name, revision=self.revision)
            return Path(found) if isinstance(found, str) else None
        import torch.hub

        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(
            urlparse(self.url).path)
        return path if path.is_file() else None


# Weights: alternatives, each a tuple of files that are all needed (timm takes
# model.safetensors or else pytorch_model.bin).
Weights = tuple[tuple[File, ...], ...]


def smp_weights(repo: str, revision: str) -> Weights:
    return ((File(repo, "config.json", revision), File(repo, "model.safetensors", revision)),)


# The ImageNet weights of the presets' encoders, known without importing smp or torchvision
# (tests/test_weights.py checks them against networks.imagenet_weights)
PRESET_WEIGHTS: dict[tuple[str, str], Weights] = {
    ("smp", "resnet34"): smp_weights("smp-hub/resnet34.imagenet",
                                     "7a57b34f723329ff020b3f8bc41771163c519d0c"),
    ("tv", "resnet101"): ((File(url="https://download.pytorch.org/models/"
                                    "resnet101-63fe2227.pth"),),),
}


def cached(weights: Weights) -> bool:
    return any(all(f.cached() for f in files) for files in weights)


def where(file: File) -> str:
    """The cache folder `file` would be in."""
    if file.repo:
        from huggingface_hub import constants

        return constants.HF_HUB_CACHE
    import torch.hub

    return str(Path(torch.hub.get_dir()) / "checkpoints")


def offline_var(env=os.environ) -> str | None:
    """'HF_HUB_OFFLINE=1' where the environment turns the Hugging Face Hub off, else None."""
    for name in OFFLINE_VARS:
        if (env.get(name) or "").strip().upper() in TRUE:
            return f"{name}={env[name]}"
    return None


def proxy_of(env=os.environ) -> tuple[str, int] | None:
    """The (host, port) of the https proxy the environment sets, or None."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        if env.get(name):
            url = urlparse(env[name] if "://" in env[name] else "http://" + env[name])
            if url.hostname:
                return url.hostname, url.port or 80
    return None


def reachable(host: str, port: int = 443, timeout: float = CONNECT_S) -> bool:
    """Whether a TCP connection to host:port opens within `timeout` seconds (the name
    lookup, which has no timeout of its own, counted: it runs in a thread left behind)."""
    opened: list[bool] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            opened.append(True)
        except OSError:
            opened.append(False)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened and opened[0])


def unavailable(weights: Weights | None, env=os.environ, reach=None) -> str | None:
    """Why `weights` cannot be had now (not cached, and the Hub switched off or the host
    unreachable: `reach`, default `reachable`), or None: cached, reachable, or unknown
    (None: the download decides)."""
    reach = reach or reachable
    if not weights or cached(weights):
        return None
    files = weights[0]
    off = offline_var(env)
    if off and any(f.repo for f in files):
        return f"{off} is set and they are not in the Hugging Face cache {where(files[0])}"
    proxy = proxy_of(env)
    for host in dict.fromkeys(f.host() for f in files):
        target = proxy or (host, 443)
        if not reach(*target):
            via = f" (through the proxy {target[0]}:{target[1]})" if proxy else ""
            return (f"{host}{via} cannot be reached (no network?) and they are not in the "
                    f"cache {where(files[0])}")
    return None
