"""Which device a stage runs on (`--device auto | cuda | cpu`), and why CUDA is not usable.

`auto` takes CUDA when torch can use it, else the CPU, except on a machine with an NVIDIA GPU
(a /dev/nvidia<N> device file, or nvidia-smi on PATH) that torch cannot use: that is almost
always a torch build for a newer CUDA than the driver runs (PyPI's torch 2.14.1 is built for
CUDA 13.0, which needs driver 580 or later), or a CPU-only build, and a run that silently
trained on the CPU would take days. It stops with one line naming torch's CUDA build, the
driver and what to do. `cuda` without usable CUDA is one line too; `cpu` is the CPU.

The facts (device files, nvidia-smi's output, /proc/driver/nvidia/version, whether torch
sees CUDA, its CUDA build) are gathered by `gather` and judged by pure functions, so tests
feed made-up machines.
"""
from __future__ import annotations

import glob
import re
import shutil
import subprocess
from dataclasses import dataclass

from competition.errors import InputError

DEVICES = ("auto", "cuda", "cpu")
SMI_QUERY = ["--query-gpu=driver_version,name,memory.total,compute_cap",
             "--format=csv,noheader"]
PROC_VERSION = "/proc/driver/nvidia/version"
WHEELS = "https://download.pytorch.org/whl/"
# The oldest Linux driver each CUDA major runs on with minor-version compatibility (every
# torch CUDA wheel of that major), from NVIDIA's CUDA Toolkit release notes (table "CUDA
# Toolkit and Minimum Required Driver Version for CUDA Minor Version Compatibility") and the
# CUDA Compatibility guide: 11.x >= 450.80.02, 12.x >= 525.60.13, 13.x >= 580.
MINOR_COMPAT = {11: "450.80.02", 12: "525.60.13", 13: "580"}
# torch's CUDA wheels, newest first, with the CUDA major each needs a driver for
NO_GPU = "torch sees no CUDA GPU here (no /dev/nvidia<N> device, no nvidia-smi)"
BUILDS = (("cu130", 13), ("cu128", 12), ("cu126", 12), ("cu118", 11))


@dataclass(frozen=True)
class Facts:
    """What this machine says about its NVIDIA GPUs and torch's CUDA."""
    device_files: tuple[str, ...] = ()  # /dev/nvidia0, /dev/nvidia1, ...
    smi_found: bool = False  # nvidia-smi on PATH
    smi: str | None = None  # its csv lines (SMI_QUERY), None when it could not run
    proc_version: str | None = None  # the text of /proc/driver/nvidia/version
    cuda_available: bool = False  # torch.cuda.is_available()
    torch_cuda: str | None = None  # torch.version.cuda: "13.0"; None for a CPU-only build
    torch_version: str = ""


def version_key(version: str) -> tuple[int, ...]:
    """'525.60.13' -> (525, 60, 13), compared as numbers."""
    return tuple(int(p) for p in re.findall(r"\d+", version))


def gpu_rows(smi: str | None) -> list[dict]:
    """nvidia-smi's csv lines -> one dict per GPU: driver, name, memory, compute_cap."""
    rows = []
    for line in (smi or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4 and parts[0]:
            rows.append(dict(zip(("driver", "name", "memory", "compute_cap"), parts[:4])))
    return rows


def driver_version(facts: Facts) -> str | None:
    """The driver version from nvidia-smi, else from /proc/driver/nvidia/version, else None."""
    rows = gpu_rows(facts.smi)
    if rows:
        return rows[0]["driver"]
    found = re.search(r"Kernel Module\b.*?\s(\d+\.\d+(?:\.\d+)?)\s", facts.proc_version or "")
    return found.group(1) if found else None


def nvidia_present(facts: Facts) -> bool:
    return bool(facts.device_files) or facts.smi_found


def needed_driver(torch_cuda: str | None) -> str | None:
    """The oldest driver torch's CUDA build runs on ('13.0' -> '580'), None if unknown."""
    if not torch_cuda:
        return None
    return MINOR_COMPAT.get(version_key(torch_cuda)[0])


def suggested_build(driver: str | None) -> str | None:
    """The newest torch CUDA wheel (cu130, cu128, ...) that `driver` runs; None if none does
    or the driver is unknown."""
    if not driver:
        return None
    for build, major in BUILDS:
        if version_key(driver) >= version_key(MINOR_COMPAT[major]):
            return build
    return None


def install_hint(driver: str | None) -> str:
    build = suggested_build(driver) or "cu126"
    return f"pip install torch torchvision --index-url {WHEELS}{build}"


def cuda_problem(facts: Facts) -> str | None:
    """Why torch cannot use this machine's NVIDIA GPU, with what to do; None when it can or
    there is no NVIDIA GPU."""
    if facts.cuda_available or not nvidia_present(facts):
        return None
    driver = driver_version(facts)
    said = f"driver {driver}" if driver else "driver version unreadable"
    torch_name = f"torch {facts.torch_version}".strip()
    if not facts.torch_cuda:
        return (f"an NVIDIA GPU is here ({said}) and {torch_name} is a CPU-only build: "
                f"install a CUDA build ({install_hint(driver)})")
    need = needed_driver(facts.torch_cuda)
    if driver and need and version_key(driver) < version_key(need):
        fix = (f"install a torch build for this driver ({install_hint(driver)}) or upgrade "
               "the driver" if suggested_build(driver) else "upgrade the NVIDIA driver")
        return (f"an NVIDIA GPU is here ({said}) but {torch_name} is built for CUDA "
                f"{facts.torch_cuda}, which needs driver >= {need}: {fix}")
    return (f"an NVIDIA GPU is here ({said}) but {torch_name} (CUDA {facts.torch_cuda}"
            + (f", needs driver >= {need}" if need else "") + ") cannot use it: check that "
            "nvidia-smi works and that this process sees the GPU (a container needs --gpus "
            f"all), or install a torch build for the driver ({install_hint(driver)})")


def choose(wanted: str, facts: Facts) -> str:
    """--device `wanted` on the machine `facts` -> "cuda" or "cpu", or an InputError."""
    if wanted not in DEVICES:
        raise InputError(f"--device {wanted}: valid values are {', '.join(DEVICES)}")
    if wanted == "cpu":
        return "cpu"
    if facts.cuda_available:
        return "cuda"
    problem = cuda_problem(facts)
    if wanted == "cuda":
        raise InputError(f"--device cuda: {problem or NO_GPU}; or pass --device cpu")
    if problem:
        raise InputError(f"--device auto: {problem}; or pass --device cpu to run on the CPU "
                         "on purpose")
    return "cpu"


def run_smi(timeout: float = 10.0) -> str | None:
    """nvidia-smi's csv lines (SMI_QUERY), or None when it is missing or fails."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        done = subprocess.run([smi, *SMI_QUERY], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def read_proc_version() -> str | None:
    try:
        with open(PROC_VERSION) as f:
            return f.read()
    except OSError:
        return None


def gather(cuda_available: bool | None = None) -> Facts:
    """This machine's Facts (runs nvidia-smi when it is on PATH)."""
    import torch

    files = tuple(sorted(p for p in glob.glob("/dev/nvidia*") if re.fullmatch(
        r"/dev/nvidia\d+", p)))
    found = shutil.which("nvidia-smi") is not None
    return Facts(files, found, run_smi() if found else None,
                 read_proc_version() if files or found else None,
                 torch.cuda.is_available() if cuda_available is None else cuda_available,
                 torch.version.cuda, torch.__version__)


def resolve(wanted: str = "auto") -> str:
    """--device `wanted` on this machine -> "cuda" or "cpu" (an InputError where it cannot
    be); the machine is only probed further when torch sees no CUDA."""
    if wanted not in DEVICES:
        return choose(wanted, Facts())
    if wanted == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return choose(wanted, gather(cuda_available=False))
