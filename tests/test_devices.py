"""--device auto | cuda | cpu (model/devices.py): made-up machines judged by the pure
functions, and the one line train stops with (exit 2) before it reads anything."""
import pytest
import torch

from competition.cli import main
from competition.errors import InputError, one_line
from competition.model import devices
from competition.model.devices import Facts, choose, cuda_problem, driver_version

A10G = "570.86.15, NVIDIA A10G, 23028 MiB, 8.6\n"
PROC = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.183.01  Release Build  "
        "(dvs-builder@U16-I3-B03-4-3)  Tue Jun 11 00:07:54 UTC 2024\nGCC version:  gcc 12\n")


def test_driver_from_nvidia_smi_then_proc():
    assert driver_version(Facts(smi=A10G, proc_version=PROC)) == "570.86.15"
    assert driver_version(Facts(proc_version=PROC)) == "535.183.01"
    assert driver_version(Facts()) is None


def test_cpu_and_usable_cuda():
    assert choose("cpu", Facts(device_files=("/dev/nvidia0",), cuda_available=True)) == "cpu"
    assert choose("auto", Facts(cuda_available=True)) == "cuda"
    assert choose("cuda", Facts(cuda_available=True)) == "cuda"
    assert choose("auto", Facts(torch_cuda="13.0")) == "cpu"  # no NVIDIA GPU at all


def test_auto_refuses_a_gpu_torch_cannot_use():
    # driver 570 runs CUDA 12.x (>= 525.60.13), not 13.0 (>= 580): the cu128 wheel fits it
    facts = Facts(device_files=("/dev/nvidia0",), smi_found=True, smi=A10G,
                  torch_cuda="13.0", torch_version="2.14.1+cu130")
    with pytest.raises(InputError) as e:
        choose("auto", facts)
    line = one_line(e.value)
    for part in ("--device auto", "2.14.1+cu130", "CUDA 13.0", "570.86.15", ">= 580",
                 "https://download.pytorch.org/whl/cu128", "--device cpu"):
        assert part in line, part
    assert "\n" not in str(e.value)


def test_auto_with_device_files_only_and_a_driver_new_enough():
    # /dev/nvidia0 present, no nvidia-smi, driver 580 read from /proc: not a driver problem
    proc = PROC.replace("535.183.01", "580.65.06")
    with pytest.raises(InputError) as e:
        choose("auto", Facts(device_files=("/dev/nvidia0",), proc_version=proc,
                             torch_cuda="13.0", torch_version="2.14.1"))
    line = one_line(e.value)
    assert "580.65.06" in line and "--gpus all" in line and "cu130" in line


def test_cpu_only_torch_with_a_gpu():
    problem = cuda_problem(Facts(smi_found=True, smi=A10G, torch_version="2.13.0+cpu"))
    assert "CPU-only build" in problem and "cu128" in problem and "570.86.15" in problem


def test_driver_too_old_for_every_wheel():
    problem = cuda_problem(Facts(smi_found=True, smi="440.33, Tesla V100, 16160 MiB, 7.0",
                                 torch_cuda="12.8", torch_version="2.7.0"))
    assert ">= 525.60.13" in problem and "upgrade the NVIDIA driver" in problem
    assert "index-url" not in problem


def test_cuda_without_cuda_is_one_line():
    with pytest.raises(InputError) as e:
        choose("cuda", Facts(torch_cuda="13.0"))
    assert "--device cuda" in one_line(e.value) and "no nvidia-smi" in one_line(e.value)


def test_train_stops_before_reading_anything(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "gather", lambda cuda_available=None: Facts(
        device_files=("/dev/nvidia0",), smi_found=True, smi=A10G, torch_cuda="13.0",
        torch_version="2.14.1"))
    monkeypatch.delenv("RANK", raising=False)
    args = ["train", "--data", str(tmp_path / "none"), "--fold", "0", "--preset", "demo_cpu",
            "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --device auto:") and "570.86.15" in err[0]
    assert main(args + ["--device", "cuda"]) == 2
    assert "--device cuda" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_runtime_and_inference_take_the_cpu_on_request(monkeypatch):
    from competition.model.forward import device
    from competition.train.runtime import runtime

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(devices, "gather", lambda cuda_available=None: Facts(
        device_files=("/dev/nvidia0",), torch_cuda="13.0"))
    assert runtime("cpu").device == torch.device("cpu")
    assert device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError):
            device("auto")
