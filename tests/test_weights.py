"""ImageNet weights with no network (model/weights.py): one line at once, never the hub's
retries; cached weights load offline. The network is never touched."""
import socket
import time

import pytest
import segmentation_models_pytorch as smp

from competition.errors import InputError, one_line
from competition.model import networks, weights
from competition.model.weights import File, PRESET_WEIGHTS, unavailable

R34 = PRESET_WEIGHTS[("smp", "resnet34")]
REV = "7a57b34f723329ff020b3f8bc41771163c519d0c"


@pytest.fixture
def empty_caches(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                 "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError("the download was tried")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", no_download)

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return tmp_path


def test_presets_weights_are_the_libraries_own():
    assert networks.imagenet_weights("deeplabv3", "resnet34") == R34
    assert networks.imagenet_weights("tv_deeplabv3", "resnet101") == PRESET_WEIGHTS[
        ("tv", "resnet101")]
    assert R34[0][0] == File("smp-hub/resnet34.imagenet", "config.json", REV)


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_variable_is_one_line_at_once(empty_caches, monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(weights, "reachable", lambda *a, **k: pytest.fail("connected"))
    start = time.perf_counter()
    with pytest.raises(InputError) as e:
        networks.build_model("deeplabv3", "resnet34", "imagenet")
    assert time.perf_counter() - start < 2
    line = one_line(e.value)
    assert f"{variable}=1" in line and "resnet34" in line and "--encoder-weights" in line
    assert str(empty_caches / "hf") in line


def test_unreachable_host_is_one_line_at_once(empty_caches):
    start = time.perf_counter()
    with pytest.raises(InputError) as e:
        networks.build_classifier("resnet34", "imagenet")
    assert time.perf_counter() - start < 2
    assert "huggingface.co cannot be reached" in one_line(e.value)
    with pytest.raises(InputError) as e:  # torchvision's host for tv_deeplabv3
        networks.build_model("tv_deeplabv3", "resnet101", "imagenet")
    assert "download.pytorch.org cannot be reached" in one_line(e.value)


def test_a_hanging_connection_gives_up_in_time(monkeypatch):
    def hang(*args, **kwargs):
        time.sleep(3)
        raise OSError("timed out")

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.perf_counter()
    assert weights.reachable("huggingface.co", timeout=0.3) is False
    assert time.perf_counter() - start < 1


def test_proxy_is_what_is_checked(empty_caches, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.local:3128")
    asked = []
    assert unavailable(R34, reach=lambda host, port: asked.append((host, port)) or True) is None
    assert asked == [("proxy.local", 3128)]


def test_cached_weights_need_no_network(empty_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = empty_caches / "hf" / "models--smp-hub--resnet34.imagenet" / "snapshots" / REV
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert unavailable(R34) is not None  # model.safetensors still missing
    (snapshot / "model.safetensors").write_bytes(b"x")
    assert weights.cached(R34) and unavailable(R34) is None
    tv = PRESET_WEIGHTS[("tv", "resnet101")]
    checkpoints = empty_caches / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet101-63fe2227.pth").write_bytes(b"x")
    assert unavailable(tv) is None
