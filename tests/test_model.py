from __future__ import annotations

import socket
import urllib.error

import pytest
import segmentation_models_pytorch as smp
import torch
import torchvision
from torch import nn

from competition.model.config import (FULL_SIZE, OLD_RATES, build_config, cells, from_dict, live,
                                to_dict)
from competition.errors import InputError
from competition.model import weights as weights_lib
from competition.model.networks import (ARCHITECTURES, DEFAULT_STRIDE, build_model, from_config,
                               param_groups)

SMP_ARCHS = ["deeplabv3", "deeplabv3plus", "unet", "fpn"]


def images(n=2, h=64, w=128):
    """(n, 3, h, w) float images."""
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(0))


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve or connect fails at once instead of waiting on the network."""
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_registry_lists_every_architecture():
    assert set(ARCHITECTURES) == {"deeplabv3", "deeplabv3plus", "unet", "fpn", "tv_deeplabv3"}
    assert set(DEFAULT_STRIDE) == set(ARCHITECTURES)
    assert DEFAULT_STRIDE["unet"] == DEFAULT_STRIDE["fpn"] == 32
    assert DEFAULT_STRIDE["deeplabv3"] == DEFAULT_STRIDE["tv_deeplabv3"] == 16


@pytest.mark.parametrize("arch", SMP_ARCHS)
def test_smp_logits_at_input_size(arch):
    torch.manual_seed(0)
    model = build_model(arch, "resnet18").eval()
    x = images()
    with torch.no_grad():
        out = model(x)
    assert type(out) is torch.Tensor
    assert out.shape == (2, 4, 64, 128)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])  # depends on the image


def test_smp_train_mode_backward():
    model = build_model("deeplabv3", "resnet18", classes=1).train()
    out = model(images())
    assert out.shape == (2, 1, 64, 128)
    out.mean().backward()
    assert model.encoder.conv1.weight.grad is not None


def test_tv_deeplabv3_logits_at_input_size():
    torch.manual_seed(0)
    model = build_model("tv_deeplabv3", "resnet50").eval()
    assert model.aux_classifier is None
    with torch.no_grad():
        out = model(images(1))
    assert type(out) is torch.Tensor
    assert out.shape == (1, 4, 64, 128)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus"])
def test_smp_output_stride_sets_deepest_feature_map(arch):
    x = images(1)
    sizes = {}
    for stride in (8, 16, None):
        model = build_model(arch, "resnet18", output_stride=stride).eval()
        with torch.no_grad():
            sizes[stride] = tuple(model.encoder(x)[-1].shape[-2:])
    assert sizes[8] == (8, 16)
    assert sizes[16] == (4, 8)
    assert sizes[None] == sizes[16]


def test_unet_stride_is_32():
    model = build_model("unet", "resnet18", output_stride=32).eval()
    with torch.no_grad():
        assert tuple(model.encoder(images(1))[-1].shape[-2:]) == (2, 4)


def test_tv_output_stride_sets_backbone_feature_map():
    x = images(1)
    sizes = {}
    for stride in (8, 16):
        model = build_model("tv_deeplabv3", "resnet50", output_stride=stride).eval()
        with torch.no_grad():
            feature = model.encoder(x)["out"]
        assert feature.shape[1] == 2048
        sizes[stride] = tuple(feature.shape[-2:])
    assert sizes == {8: (8, 16), 16: (4, 8)}


def test_unknown_arch():
    with pytest.raises(InputError) as e:
        build_model("segformer", "resnet18")
    message = one_line(e)
    assert "segformer" in message
    assert all(name in message for name in ARCHITECTURES)


def test_unknown_encoder():
    with pytest.raises(InputError) as e:
        build_model("unet", "resnet19")
    message = one_line(e)
    assert "resnet19" in message
    assert "resnet18" in message and "efficientnet-b0" in message and "tu-" in message


def test_tv_encoder_must_be_resnet50_or_101():
    with pytest.raises(InputError) as e:
        build_model("tv_deeplabv3", "resnet18")
    message = one_line(e)
    assert "resnet18" in message and "resnet50" in message and "resnet101" in message


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus", "tv_deeplabv3"])
@pytest.mark.parametrize("stride", [4, 32])
def test_deeplab_bad_stride(arch, stride):
    with pytest.raises(InputError) as e:
        build_model(arch, "resnet50", output_stride=stride)
    message = one_line(e)
    assert str(stride) in message and "8 or 16" in message


@pytest.mark.parametrize("arch", ["unet", "fpn"])
@pytest.mark.parametrize("stride", [8, 16])
def test_fixed_stride_archs(arch, stride):
    with pytest.raises(InputError) as e:
        build_model(arch, "resnet18", output_stride=stride)
    assert f"{arch} has a fixed output stride of 32" in one_line(e)


def test_undilatable_encoder_is_input_error():
    with pytest.raises(InputError) as e:
        build_model("deeplabv3", "vgg11")
    assert "vgg11" in one_line(e)


def test_encoder_without_imagenet_weights(no_network):
    with pytest.raises(InputError) as e:
        build_model("unet", "resnext101_32x4d", "imagenet")
    assert "--encoder-weights" in one_line(e)


@pytest.fixture
def resnet18_file(tmp_path):
    """A torchvision ImageNet-style resnet18 checkpoint (with fc.*) and its state dict."""
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()
    assert "fc.weight" in state
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    return path, state


def test_path_weights_load_exactly(resnet18_file):
    path, state = resnet18_file
    model = build_model("deeplabv3", "resnet18", str(path))
    encoder = model.encoder.state_dict()
    assert torch.equal(model.encoder.conv1.weight, state["conv1.weight"])
    for key in encoder:
        assert torch.equal(encoder[key], state[key]), key
    assert not hasattr(model.encoder, "fc")


def test_path_weights_wrapped_and_prefixed(tmp_path, resnet18_file):
    _, state = resnet18_file
    path = tmp_path / "wrapped.pth"
    wrapped = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": {f"module.encoder.{k}": v for k, v in wrapped.items()},
                "epoch": torch.tensor(3)}, path)
    model = build_model("unet", "resnet18", path)
    assert torch.equal(model.encoder.layer4[1].bn2.weight, state["layer4.1.bn2.weight"])
    assert torch.equal(model.encoder.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_path_weights_tv_backbone(tmp_path):
    torch.manual_seed(2)
    state = torchvision.models.resnet50().state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save({"model": {f"backbone.{k}": v for k, v in state.items()}}, path)
    model = build_model("tv_deeplabv3", "resnet50", str(path))
    assert torch.equal(model.encoder.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.encoder.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])


def test_path_weights_of_another_resnet(tmp_path, resnet18_file):
    path34 = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path34)
    with pytest.raises(InputError) as e:
        build_model("deeplabv3", "resnet18", str(path34))
    message = one_line(e)
    assert str(path34) in message and "unexpected key layer1.2." in message

    path18, _ = resnet18_file
    with pytest.raises(InputError) as e:
        build_model("deeplabv3", "resnet34", str(path18))
    message = one_line(e)
    assert str(path18) in message and "resnet34" in message and "missing key" in message
    assert "more)" in message


def test_path_weights_wrong_shape(tmp_path, resnet18_file):
    _, state = resnet18_file
    state = dict(state, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    path = tmp_path / "bad_shape.pth"
    torch.save(state, path)
    with pytest.raises(InputError) as e:
        build_model("deeplabv3", "resnet18", str(path))
    message = one_line(e)
    assert str(path) in message and "conv1.weight" in message
    assert "(64, 3, 3, 3)" in message and "(64, 3, 7, 7)" in message


def test_path_weights_missing_or_unreadable(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(InputError) as e:
        build_model("deeplabv3", "resnet18", str(missing))
    assert str(missing) in one_line(e)

    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(InputError) as e:
        build_model("deeplabv3", "resnet18", str(garbage))
    assert str(garbage) in one_line(e)

    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(InputError) as e:
        build_model("deeplabv3", "resnet18", str(listing))
    assert str(listing) in one_line(e) and "state dict" in str(e.value)


@pytest.mark.parametrize("arch,encoder", [("deeplabv3", "resnet18"), ("unet", "resnet18"),
                                          ("tv_deeplabv3", "resnet50")])
def test_param_groups_partition(arch, encoder):
    model = build_model(arch, encoder)
    encoder_params, rest = param_groups(model)
    enc_ids = [id(p) for p in encoder_params]
    rest_ids = [id(p) for p in rest]
    all_ids = [id(p) for p in model.parameters()]
    assert encoder_params and rest
    assert not set(enc_ids) & set(rest_ids)
    assert sorted(enc_ids + rest_ids) == sorted(all_ids)
    assert enc_ids == [id(p) for p in model.encoder.parameters()]


def test_param_groups_rest_is_the_head():
    model = build_model("tv_deeplabv3", "resnet50")
    _, rest = param_groups(model)
    assert [id(p) for p in rest] == [id(p) for p in model.classifier.parameters()]


def test_imagenet_offline_smp(monkeypatch, no_network):
    """A download that fails after the quick check passed (weights.unavailable) is one line."""
    monkeypatch.setattr(weights_lib, "reachable", lambda *args, **kwargs: True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", offline)
    with pytest.raises(InputError) as e:
        build_model("deeplabv3", "resnet18", "imagenet")
    message = one_line(e)
    assert calls, "smp no longer downloads through encoders.hf_hub_download"
    assert "resnet18" in message and "--encoder-weights" in message


def test_imagenet_offline_torchvision(monkeypatch, no_network):
    monkeypatch.setattr(weights_lib, "reachable", lambda *args, **kwargs: True)
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(InputError) as e:
        build_model("tv_deeplabv3", "resnet50", "imagenet")
    message = one_line(e)
    assert calls and "resnet50" in calls[0]
    assert "resnet50" in message and "--encoder-weights" in message


def aspp_convs(model: nn.Module) -> list[nn.Conv2d]:
    """The 3x3 convolution of each of the ASPP's three atrous branches (smp's separable
    ones: the depthwise part)."""
    aspp = next(m for m in model.modules() if type(m).__name__ == "ASPP")
    convs = [m for m in aspp.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 3
    return convs


def trained_taps(model: nn.Module, h: int, w: int) -> list[torch.Tensor]:
    """Per ASPP branch, a (3, 3) bool: which kernel positions get a nonzero gradient from one
    backward pass on (2, 3, h, w) images in train mode (the encoder frozen: only the head's
    gradients are needed)."""
    model.train().zero_grad()
    model.encoder.requires_grad_(False)
    out = model(images(2, h, w))
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weights).sum().backward()
    return [conv.weight.grad.abs().sum((0, 1)) > 0 for conv in aspp_convs(model)]


def live_taps(conv: nn.Conv2d, h: int, w: int, stride: int) -> torch.Tensor:
    """(3, 3) bool: the taps the rule says read an (h, w) image's stride-`stride` map."""
    rows = torch.tensor([live(k * conv.dilation[0], cells(h, stride)) for k in (-1, 0, 1)])
    columns = torch.tensor([live(k * conv.dilation[1], cells(w, stride)) for k in (-1, 0, 1)])
    return rows[:, None] & columns[None, :]


@pytest.mark.parametrize("preset, overrides", [
    ("deeplabv3_r34", dict(encoder="resnet18")),
    ("deeplabv3_r34", dict(arch="deeplabv3plus", encoder="resnet18")),
    ("deeplabv3_r101", dict(encoder="resnet50")),
    ("demo_cpu", {}),
])
def test_every_aspp_tap_live_at_full_size_trains_at_the_crop(preset, overrides):
    config = build_config(preset, encoder_weights="none", **overrides)
    torch.manual_seed(0)
    model = from_config(config)
    stride = config.output_stride or 16
    crop = (config.crop_height, config.crop_width)
    at_crop, at_full = trained_taps(model, *crop), trained_taps(model, *FULL_SIZE)
    for conv, c, f in zip(aspp_convs(model), at_crop, at_full):
        assert torch.equal(c, live_taps(conv, *crop, stride)), conv  # the rule is autograd's
        assert torch.equal(f, live_taps(conv, *FULL_SIZE, stride)), conv
        assert not (f & ~c).any(), f"{conv}: taps live at 256x1600 that never train"
    # the presets' rates leave no dead tap either: all 9 of every branch train at the crop
    assert all(c.all() for c in at_crop)


def test_old_rates_leave_the_widest_branch_untrained_at_a_512_crop(capsys):
    """(12, 24, 36) at a 256x512 crop, stride 16: a 16x32 map against 16x100 at full size.
    Rows 12 read both and 24, 36 neither; columns 12 and 24 read both, 36 only full size:
    the middle row's outer taps of branch 3, (1, 0) and (1, 2), get no gradient."""
    config = build_config(encoder="resnet18", encoder_weights="none", atrous_rates_h=OLD_RATES,
                          atrous_rates_w=OLD_RATES, allow_untrained_taps=True)
    torch.manual_seed(0)
    model = from_config(config)
    warning = capsys.readouterr().err.strip()
    assert warning.startswith("warning: atrous_rates_w 36 (ASPP branch 3)") and "\n" not in warning
    at_crop, at_full = trained_taps(model, 256, 512), trained_taps(model, *FULL_SIZE)
    untrained = [(f & ~c).nonzero().tolist() for c, f in zip(at_crop, at_full)]
    assert untrained == [[], [], [[1, 0], [1, 2]]]


@pytest.mark.parametrize("arch, encoder", [("deeplabv3", "resnet18"),
                                           ("deeplabv3plus", "resnet18"),
                                           ("tv_deeplabv3", "resnet50")])
def test_atrous_rates_are_per_axis_dilations_doubled_at_stride_8(arch, encoder):
    for stride, scale in ((16, 1), (8, 2)):
        model = build_model(arch, encoder, output_stride=stride, atrous_rates_h=(1, 2, 3),
                            atrous_rates_w=(4, 5, 7))
        expected = [(1 * scale, 4 * scale), (2 * scale, 5 * scale), (3 * scale, 7 * scale)]
        assert [conv.dilation for conv in aspp_convs(model)] == expected
        assert [conv.padding for conv in aspp_convs(model)] == expected  # same output size


@pytest.mark.parametrize("stride", [8, 16])
def test_a_checkpoint_config_from_before_the_rate_fields_builds_its_old_aspp(stride, capsys):
    """Weights of any rates fit any other (a 3x3 kernel either way): only the saved config
    can say which dilations the weights were trained with, (12, 24, 36) at every stride."""
    saved = to_dict(build_config("demo_cpu", output_stride=stride))
    for key in ("atrous_rates_h", "atrous_rates_w", "allow_untrained_taps"):
        del saved[key]
    model = from_config(from_dict(saved), "none")
    assert [conv.dilation for conv in aspp_convs(model)] == [(d, d) for d in OLD_RATES]
    assert capsys.readouterr().err.startswith("warning: atrous_rates_h ")  # 12 rows vs 8
