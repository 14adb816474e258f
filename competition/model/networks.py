"""Networks: (N, 3, H, W) float images -> (N, classes, H, W) mask logits, image-level
logits (N, classes), or both.

Segmenters: four segmentation_models_pytorch architectures (any smp encoder, or
`tu-<timm model>`) and torchvision's DeepLabV3 on a ResNet-50/101; with `aux_classes` they
also return image-level logits from an auxiliary head on the pooled deepest encoder features
(smp's `aux_params`), as a tuple (masks, labels). Classifiers (`Classifier`): an smp encoder
(any smp or `tu-` timm encoder), average pooling and a linear layer: (N, classes) logits.
`split_output` tells the three apart. Every model has an `encoder` attribute (the backbone),
which `param_groups` separates from the rest for a lower learning rate.

Encoder weights: "none" (random), "imagenet" (downloaded by smp/torchvision/timm, or taken
from their caches; weights not cached with no network are an InputError at once, before the
libraries' retries: weights.unavailable) or the PATH of a local state dict that must fit the
encoder exactly.

The DeepLab models' ASPP dilates its three 3x3 branches per axis, (rows, columns), from the
config's atrous rates; see config.untrained_taps for why they are small on 256-high strips.
"""
from __future__ import annotations

import os
import shutil
import sys
from functools import partial
from pathlib import Path

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import ResNet50_Weights, ResNet101_Weights, resnet50, resnet101
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

from competition.model import weights as weights_lib
from competition.model.config import TrainConfig, dilations, untrained_line
from competition.errors import InputError

TV_BACKBONES = {
    "resnet50": (resnet50, ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (resnet101, ResNet101_Weights.IMAGENET1K_V1),
}
TV_DILATION = {8: [False, True, True], 16: [False, False, True]}  # layer2..layer4 dilated
PREFIXES = ("module.", "encoder.", "backbone.")  # stripped from the keys of a weights file
CLASSIFIER_KEYS = ("fc.weight", "fc.bias")  # an ImageNet ResNet checkpoint has them


class TvDeepLabV3(DeepLabV3):
    """torchvision DeepLabV3 returning the logits tensor (N, classes, H, W) instead of a dict,
    or with `classification_head` (smp's, on the 2048 pooled features) the tuple (masks
    (N, classes, H, W), labels (N, aux classes)) as smp's models do with aux_params.
    `backbone` (alias `encoder`) maps (N, 3, H, W) to {"out": (N, 2048, H/stride, W/stride)}."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module,
                 classification_head: nn.Module | None = None):
        super().__init__(backbone, classifier, aux_classifier=None)
        self.classification_head = classification_head

    @property
    def encoder(self) -> nn.Module:
        return self.backbone

    def forward(self, x: torch.Tensor):
        features = self.backbone(x)["out"]
        logits = F.interpolate(self.classifier(features), size=x.shape[-2:], mode="bilinear",
                               align_corners=False)
        if self.classification_head is None:
            return logits
        return logits, self.classification_head(features)


class Classifier(nn.Module):
    """(N, 3, H, W) float images of any size (multiples of 32) -> (N, classes) logits: the
    deepest feature map of an smp encoder, averaged over its cells, then dropout and a linear
    layer (smp's ClassificationHead). Trained on crops, it runs on full-size images."""

    def __init__(self, encoder: nn.Module, classes: int, dropout: float = 0.2):
        super().__init__()
        self.encoder = encoder
        self.classification_head = smp.base.ClassificationHead(
            encoder.out_channels[-1], classes, pooling="avg", dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classification_head(self.encoder(x)[-1])


def split_output(out) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Any model's output -> (mask logits (N, C, H, W) or None, image logits (N, C) or None)."""
    if isinstance(out, (tuple, list)):
        return out[0], out[1]
    return (out, None) if out.dim() == 4 else (None, out)


Rates = list[tuple[int, int]]  # the (rows, columns) dilation of each ASPP 3x3 branch


AUX_DROPOUT = 0.0  # the auxiliary head's dropout: a linear layer on 512-2048 pooled features


def _smp_model(cls, encoder: str, output_stride: int, classes: int, imagenet: bool,
               rates: Rates, aux_classes: int) -> nn.Module:
    dilation = {} if output_stride == 32 else {"encoder_output_stride": output_stride}
    aspp = {"decoder_atrous_rates": rates} if cls in (smp.DeepLabV3, smp.DeepLabV3Plus) else {}
    aux = ({"aux_params": {"classes": aux_classes, "pooling": "avg", "dropout": AUX_DROPOUT}}
           if aux_classes else {})
    return cls(encoder_name=encoder, encoder_weights="imagenet" if imagenet else None,
               classes=classes, activation=None, **dilation, **aspp, **aux)


def _tv_deeplabv3(encoder: str, output_stride: int, classes: int, imagenet: bool,
                  rates: Rates, aux_classes: int) -> nn.Module:
    resnet, weights = TV_BACKBONES[encoder]
    net = resnet(weights=weights if imagenet else None,
                 replace_stride_with_dilation=TV_DILATION[output_stride])
    backbone = IntermediateLayerGetter(net, return_layers={"layer4": "out"})
    head = (smp.base.ClassificationHead(2048, aux_classes, pooling="avg", dropout=AUX_DROPOUT)
            if aux_classes else None)
    return TvDeepLabV3(backbone, DeepLabHead(2048, classes, rates), head)


ARCHITECTURES = {  # each (encoder, output_stride, classes, imagenet, rates, aux_classes) -> model
    "deeplabv3": partial(_smp_model, smp.DeepLabV3),
    "deeplabv3plus": partial(_smp_model, smp.DeepLabV3Plus),
    "unet": partial(_smp_model, smp.Unet),  # no ASPP: rates unused
    "fpn": partial(_smp_model, smp.FPN),  # no ASPP: rates unused
    "tv_deeplabv3": _tv_deeplabv3,
}
DEFAULT_STRIDE = {"deeplabv3": 16, "deeplabv3plus": 16, "unet": 32, "fpn": 32, "tv_deeplabv3": 16}
STRIDES = {"deeplabv3": (8, 16), "deeplabv3plus": (8, 16), "unet": (32,), "fpn": (32,),
           "tv_deeplabv3": (8, 16)}


def _check_encoder(arch: str, encoder: str, imagenet: bool) -> None:
    if arch == "tv_deeplabv3":
        if encoder not in TV_BACKBONES:
            raise InputError(f"--encoder {encoder}: tv_deeplabv3 takes {', '.join(TV_BACKBONES)}")
        return
    if encoder.startswith("tu-") and timm.is_model(encoder[3:]):
        return
    names = smp.encoders.get_encoder_names()
    if encoder not in names:
        raise InputError(f"--encoder {encoder}: unknown encoder; valid: "
                         f"{', '.join(sorted(names))}, or tu-<timm model>")
    if imagenet and "imagenet" not in smp.encoders.encoders[encoder]["pretrained_settings"]:
        raise InputError(f"--encoder {encoder}: smp has no ImageNet weights for it; pass "
                         f"--encoder-weights PATH (a local state dict) or --encoder-weights none")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, keys without PREFIXES and without CLASSIFIER_KEYS."""
    if not path.is_file():
        raise InputError(f"{path}: encoder weights file not found "
                         f"(--encoder-weights takes none, imagenet or a PATH)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{path}: unreadable weights file ({e.__class__.__name__})") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise InputError(f"{path}: not a state dict (a dict of tensors, "
                         f"or one under a 'state_dict' or 'model' key)")
    out = {}
    for key, value in state.items():
        while key.startswith(PREFIXES):
            key = key.split(".", 1)[1]
        if key not in CLASSIFIER_KEYS:
            out[key] = value
    return out


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def _load_encoder_weights(module: nn.Module, state: dict[str, torch.Tensor], path: Path,
                          encoder: str) -> None:
    """Load `state` into `module`, raising InputError unless every key and shape fits
    (a missing BatchNorm `num_batches_tracked` counter is allowed: it starts at 0)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    problem = None
    if missing:
        problem = f"missing key {missing[0]}{_more(missing)}"
    elif unexpected:
        problem = f"unexpected key {unexpected[0]}{_more(unexpected)}"
    elif wrong:
        k = wrong[0]
        problem = (f"key {k} has shape {tuple(state[k].shape)}, the encoder expects "
                   f"{tuple(expected[k].shape)}")
    if problem:
        raise InputError(f"{path}: does not fit encoder {encoder}: {problem}")
    module.load_state_dict(state)


def download_error(encoder: str, e: OSError) -> InputError:
    """The one line for ImageNet weights that could not be downloaded (offline)."""
    return InputError(f"the ImageNet weights for {encoder} could not be downloaded "
                      f"({e.__class__.__name__}); pass --encoder-weights PATH "
                      f"(a local state dict) or --encoder-weights none")


def imagenet_weights(arch: str, encoder: str) -> weights_lib.Weights | None:
    """The files the ImageNet weights of `encoder` (in `arch`) download, as the libraries
    name them; None where they are not known (the download decides)."""
    if arch == "tv_deeplabv3":
        return ((weights_lib.File(url=TV_BACKBONES[encoder][1].url),),)
    if encoder.startswith("tu-"):
        cfg = timm.models.get_pretrained_cfg(encoder[3:])
        if cfg is None:
            return None
        if cfg.hf_hub_id:
            names = ((cfg.hf_hub_filename,) if cfg.hf_hub_filename
                     else ("model.safetensors", "pytorch_model.bin"))
            return tuple((weights_lib.File(cfg.hf_hub_id, name),) for name in names)
        return ((weights_lib.File(url=cfg.url),),) if cfg.url else None
    settings = smp.encoders.encoders[encoder]["pretrained_settings"].get("imagenet")
    return (weights_lib.smp_weights(settings["repo_id"], settings["revision"])
            if settings else None)


def check_imagenet(arch: str, encoder: str) -> None:
    """An InputError at once where the ImageNet weights are neither cached nor downloadable
    now (HF_HUB_OFFLINE, or the host unreachable within weights.CONNECT_S)."""
    reason = weights_lib.unavailable(imagenet_weights(arch, encoder))
    if reason:
        raise InputError(f"the ImageNet weights for {encoder} cannot be had: {reason}; pass "
                         f"--encoder-weights PATH (a local state dict) or --encoder-weights "
                         f"none (python -m competition doctor lists what is cached)")


def build_model(arch: str = "deeplabv3", encoder: str = "resnet34", encoder_weights: str = "none",
                output_stride: int | None = None, classes: int = 4,
                atrous_rates_h: tuple[int, ...] = TrainConfig.atrous_rates_h,
                atrous_rates_w: tuple[int, ...] = TrainConfig.atrous_rates_w,
                aux_classes: int = 0) -> nn.Module:
    """A model whose forward maps (N, 3, H, W) float images to (N, classes, H, W) logits,
    or with aux_classes > 0 to the tuple (those logits, (N, aux_classes) image logits).

    output_stride: the encoder's deepest feature map is (H/stride, W/stride); None takes
    DEFAULT_STRIDE[arch]. The deeplab architectures take 8 or 16, unet and fpn only 32.
    smp models need H and W divisible by the stride (32 for unet/fpn).
    encoder_weights: "none", "imagenet" or the PATH of a local state dict for the encoder.
    atrous_rates_h, atrous_rates_w: the ASPP branches' rates along rows and columns in cells
    of the stride-16 map (doubled at stride 8); unet and fpn have no ASPP and ignore them.
    """
    if arch not in ARCHITECTURES:
        raise InputError(f"--arch {arch}: unknown architecture; valid: {', '.join(ARCHITECTURES)}")
    stride = DEFAULT_STRIDE[arch] if output_stride is None else output_stride
    if stride not in STRIDES[arch]:
        if len(STRIDES[arch]) == 1:
            raise InputError(f"--output-stride {stride}: {arch} has a fixed output stride of "
                             f"{STRIDES[arch][0]}")
        raise InputError(f"--output-stride {stride}: {arch} takes "
                         f"{' or '.join(map(str, STRIDES[arch]))}")
    weights = "none" if encoder_weights is None else str(encoder_weights)
    imagenet = weights == "imagenet"
    _check_encoder(arch, encoder, imagenet)
    if imagenet:
        check_imagenet(arch, encoder)
    state = None if weights in ("none", "imagenet") else _read_state_dict(Path(weights))
    rates = list(zip(dilations(atrous_rates_h, stride), dilations(atrous_rates_w, stride)))
    try:
        model = ARCHITECTURES[arch](encoder, stride, classes, imagenet, rates, aux_classes)
    except OSError as e:
        if not imagenet:
            raise
        raise download_error(encoder, e) from None
    except ValueError as e:  # smp: e.g. a VGG or Xception encoder cannot be dilated
        message = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise InputError(f"--encoder {encoder} with --arch {arch}: {message}") from None
    if state is not None:
        _load_encoder_weights(model.encoder, state, Path(weights), encoder)
    return model


def _check_classifier_encoder(encoder: str, imagenet: bool) -> None:
    if encoder.startswith("tu-"):
        if not timm.is_model(encoder[3:]):
            raise InputError(f"--encoder {encoder}: timm has no model {encoder[3:]!r}")
        return
    _check_encoder("unet", encoder, imagenet)


def build_classifier(encoder: str = "resnet34", encoder_weights: str = "none",
                     classes: int = 4, dropout: float = 0.2) -> Classifier:
    """A Classifier on smp encoder `encoder` (or `tu-<timm model>`); encoder_weights as for
    build_model: "none", "imagenet" (a download) or the PATH of a local state dict."""
    weights = "none" if encoder_weights is None else str(encoder_weights)
    imagenet = weights == "imagenet"
    _check_classifier_encoder(encoder, imagenet)
    if imagenet:
        check_imagenet("classifier", encoder)
    state = None if weights in ("none", "imagenet") else _read_state_dict(Path(weights))
    try:
        backbone = smp.encoders.get_encoder(encoder, weights="imagenet" if imagenet else None)
    except OSError as e:
        if not imagenet:
            raise
        raise download_error(encoder, e) from None
    if state is not None:
        _load_encoder_weights(backbone, state, Path(weights), encoder)
    return Classifier(backbone, classes, dropout)


def from_config(config, encoder_weights: str | None = None) -> nn.Module:
    """The model of a TrainConfig: a Classifier for task "classify"; else build_model
    (output_stride 0: the architecture's default), with the auxiliary image-level head when
    cls_weight > 0. `encoder_weights` replaces the config's (e.g. "none" when a checkpoint
    will be loaded). A config that allows untrained ASPP taps (config.untrained_taps) prints
    a warning."""
    weights = config.encoder_weights if encoder_weights is None else encoder_weights
    if config.task == "classify":
        return build_classifier(config.encoder, weights)
    untrained = untrained_line(config)
    if untrained:  # config.check refused it unless allow_untrained_taps
        print(f"warning: {untrained}; allowed by allow_untrained_taps", file=sys.stderr)
    return build_model(config.arch, config.encoder, weights, config.output_stride or None,
                       atrous_rates_h=config.atrous_rates_h, atrous_rates_w=config.atrous_rates_w,
                       aux_classes=4 if config.cls_weight > 0 else 0)


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(encoder parameters, the rest: decoder and head), each parameter in exactly one,
    e.g. for an optimizer with a lower learning rate on a pretrained encoder."""
    encoder = list(model.encoder.parameters())
    ids = {id(p) for p in encoder}
    return encoder, [p for p in model.parameters() if id(p) not in ids]


# torch.compile's backend: inductor (its default) writes fused kernels, C++ on the CPU and
# Triton on a GPU, built with the machine's compiler; tests swap in aot_eager, which needs none
COMPILE_BACKEND = "inductor"


def missing_compiler(device: torch.device) -> str | None:
    """Why COMPILE_BACKEND cannot build kernels for `device` here, or None when it can:
    inductor needs a C++ compiler on the CPU (g++ or $CXX, torch's own search), and Triton a C
    compiler on a GPU ($CC, gcc or clang) to build its launchers."""
    if COMPILE_BACKEND != "inductor":
        return None
    if device.type == "cuda":
        if os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang"):
            return None
        return "no C compiler for Triton (gcc or clang on PATH, or $CC)"
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception:  # torch._inductor.exc.InvalidCxxCompiler, or a failing --version
        return f"no C++ compiler ({os.environ.get('CXX', 'g++')} not found; set $CXX)"
    return None


def check_compiler(device: torch.device) -> None:
    """--compile on a machine without the compiler the backend needs: one line here, not a
    traceback from deep inside inductor at the first forward."""
    reason = missing_compiler(device)
    if reason:
        raise InputError(f"--compile: torch.compile's {COMPILE_BACKEND} backend builds kernels "
                         f"for the {device.type} with a compiler, and this machine has {reason};"
                         " install one (e.g. apt-get install g++) or leave --compile off")


def compile_model(model: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile(model): a wrapper sharing the module's parameters, compiled at its first
    call for each input shape and mode (static shapes: a pass's last, smaller batch compiles
    once more). Its state_dict keys carry an `_orig_mod.` prefix, so weights are saved from
    the module itself (train.unwrap)."""
    check_compiler(device)
    return torch.compile(model, backend=COMPILE_BACKEND, dynamic=False)
