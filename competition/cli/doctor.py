"""`doctor`: one screen on whether this machine can run the pipeline, and what to do where not.

Python, torch and its CUDA build, the NVIDIA driver and each GPU (bf16: compute capability
8.0 or later), the packages of requirements.txt, whether the presets' ImageNet weights are
cached, shared memory and disk against what the image caches and a 5-fold run need, and the
kaggle CLI with its credentials. It refuses nothing and exits 0: each problem is a line that
starts with `problem:` and says what to do. No model is built and nothing goes on the network.

`gather` reads the machine into a `Machine`; the `*_lines` functions are pure, so tests feed
them made-up machines. Space needed, for N train and M test images of 256x1600 (the caches
keep one grey uint8 plane per image, data/cache.py: PLANE = 256 * 1600 = 409,600 bytes):
- `--cache ram`: N * PLANE in /dev/shm and in available memory, per training process
  (12,568 train images: 4.79 GiB);
- `--cache disk`: (N + M) * PLANE in the working folder's cache/ (train and test images);
- a 5-fold run of the default preset: 5 * 5 * STATE_BYTES (per fold best.pt, last.pt with
  AdamW's two moments, and the previous best.pt while a new one is written: 5 copies of the
  weights); STATE_BYTES is deeplabv3_r34's state dict (tests/test_doctor.py measures it).
- loader workers pass batches through /dev/shm: under SHM_LOADER free (Docker's default is
  64 MiB) they fail with a bus error.
"""
from __future__ import annotations

import os
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

HEIGHT, WIDTH = 256, 1600
PLANE = HEIGHT * WIDTH  # bytes of one cached image (data/cache.py's PLANE)
REAL_TRAIN, REAL_TEST = 12_568, 5_506  # the real competition's images, when none are here
FOLDS = 5
STATE_BYTES = 104_114_280  # deeplabv3_r34's state dict, float32
COPIES = 5  # of the weights per fold: best.pt, last.pt (weights + 2 AdamW moments), previous
SHM_LOADER = 1 << 30  # /dev/shm below this: loader workers fail (Docker's default: 64 MiB)
# the presets whose encoder_weights is "imagenet", with the weights they load (model/weights)
PRESET_ENCODERS = {"deeplabv3_r34": ("smp", "resnet34"), "deeplabv3_r101": ("tv", "resnet101"),
                   "classifier_r34": ("smp", "resnet34")}


@dataclass
class Machine:
    """What `gather` read; every field can be made up in a test."""
    python: str = ""
    gpu: object = None  # devices.Facts
    cuda_gpus: list = field(default_factory=list)  # torch's view: name, memory, capability
    packages: dict = field(default_factory=dict)  # requirement -> (spec, installed or None)
    weights: dict = field(default_factory=dict)  # preset -> (weights cached, cache folder)
    offline: str | None = None  # "HF_HUB_OFFLINE=1" where the environment says so
    data: str = ""
    images: tuple[int, int] | None = None  # (train, test) images found in `data`
    shm_free: int | None = None  # None: no /dev/shm
    memory: int = 0  # bytes available
    disk_free: int = 0
    workdir: str = "."
    kaggle_cli: str | None = None
    kaggle_credentials: str | None = None


def size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def platform_lines(m: Machine) -> list[str]:
    g = m.gpu
    build = f"CUDA {g.torch_cuda} build" if g.torch_cuda else "CPU-only build"
    return [f"python {m.python}", f"torch {g.torch_version} ({build}); CUDA usable: "
            + ("yes" if g.cuda_available else "no")]


def gpu_lines(m: Machine) -> list[str]:
    from competition.model import devices

    g = m.gpu
    driver = devices.driver_version(g)
    lines = [f"NVIDIA driver: {driver or 'none'}"
             + (f" (torch's CUDA {g.torch_cuda} needs >= {devices.needed_driver(g.torch_cuda)})"
                if driver and devices.needed_driver(g.torch_cuda) else "")]
    if m.cuda_gpus:
        for i, gpu in enumerate(m.cuda_gpus):
            major, minor = gpu["capability"]
            lines.append(f"GPU {i}: {gpu['name']}, {size(gpu['memory'])}, compute "
                         f"{major}.{minor}, bf16 " + ("yes" if (major, minor) >= (8, 0)
                                                      else "no (fp16 autocast)"))
    else:
        for i, row in enumerate(devices.gpu_rows(g.smi)):
            lines.append(f"GPU {i}: {row['name']}, {row['memory']}, compute "
                         f"{row['compute_cap']} (nvidia-smi; torch cannot use it)")
        if not devices.nvidia_present(g):
            lines.append("GPU: none (training and inference run on the CPU)")
    problem = devices.cuda_problem(g)
    if problem:
        lines.append(f"problem: {problem}; until then train with --device cpu")
    return lines


def package_lines(packages: dict) -> list[str]:
    """packages: name -> (spec from requirements.txt, installed version or None)."""
    if not packages:
        return ["problem: requirements.txt not found: run from the project's folder"]
    said = ", ".join(f"{name} {have}" for name, (_, have) in packages.items() if have)
    lines = [f"packages: {said}"]
    for name, (spec, have) in packages.items():
        if have is None:
            lines.append(f"problem: {name} is not installed: bash run.sh setup "
                         "(or pip install -r requirements.txt)")
        elif not satisfies(have, spec):
            lines.append(f"problem: {name} {have} is installed, requirements.txt wants "
                         f"{name}{spec}: bash run.sh setup (or pip install -r requirements.txt)")
    return lines


def satisfies(version: str, spec: str) -> bool:
    if not spec:
        return True
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # pins only
        return not spec.startswith("==") or version.split("+")[0] == spec[2:]
    return SpecifierSet(spec).contains(version.split("+")[0], prereleases=True)


def weights_lines(m: Machine) -> list[str]:
    lines = []
    for preset, (found, folder) in m.weights.items():
        source, encoder = PRESET_ENCODERS[preset]
        if found:
            lines.append(f"ImageNet weights of {preset} ({encoder}): cached in {folder}")
        elif m.offline:
            lines.append(f"problem: the ImageNet weights of {preset} ({encoder}) are not in "
                         f"{folder} and {m.offline} is set: download them on a machine with "
                         "network into that cache, or train with --encoder-weights PATH (a "
                         "local state dict) or --encoder-weights none")
        else:
            lines.append(f"ImageNet weights of {preset} ({encoder}): not cached (the first "
                         f"run downloads them into {folder}; offline: --encoder-weights PATH "
                         "or none)")
    return lines


def space_lines(m: Machine) -> list[str]:
    """/dev/shm, memory and disk against the formulas of the module's docstring."""
    train, test = m.images or (REAL_TRAIN, REAL_TEST)
    counted = (f"{m.data}: {train:,} train and {test:,} test images" if m.images else
               f"no images in {m.data}: the real competition's {train:,} train and "
               f"{test:,} test images")
    ram, disk = train * PLANE, (train + test) * PLANE
    run = FOLDS * COPIES * STATE_BYTES
    lines = [f"dataset: {counted}"]
    if m.shm_free is None:
        lines.append("problem: no /dev/shm: --cache ram cannot work (use --cache disk) and "
                     "loader workers may fail (use --workers 0)")
    else:
        lines.append(f"/dev/shm: {size(m.shm_free)} free, memory {size(m.memory)} available; "
                     f"--cache ram needs {size(ram)} ({train:,} x {PLANE:,} B) per process")
        if m.shm_free < SHM_LOADER:
            lines.append(f"problem: /dev/shm has {size(m.shm_free)} free: loader workers "
                         "pass batches through it and fail (bus error); give the container "
                         "more (docker run --shm-size=8g, or --ipc=host) or use --workers 0")
        if min(m.shm_free, m.memory) < ram:
            lines.append(f"problem: --cache ram needs {size(ram)} and this machine has "
                         f"{size(min(m.shm_free, m.memory))} (the smaller of /dev/shm and "
                         "available memory): use --cache disk or --cache none")
    lines.append(f"disk ({m.workdir}): {size(m.disk_free)} free; --cache disk needs "
                 f"{size(disk)} ({train + test:,} x {PLANE:,} B), a {FOLDS}-fold run of "
                 f"deeplabv3_r34 {size(run)} of checkpoints ({FOLDS} x {COPIES} x "
                 f"{size(STATE_BYTES)})")
    if m.disk_free < run:
        lines.append(f"problem: {size(m.disk_free)} free in {m.workdir} and a {FOLDS}-fold "
                     f"run needs {size(run)}: free some space or train elsewhere (--out)")
    elif m.disk_free < run + disk:
        lines.append(f"problem: {size(m.disk_free)} free in {m.workdir}: enough for a "
                     f"{FOLDS}-fold run ({size(run)}) but not with --cache disk as well "
                     f"({size(disk)} more): use --cache ram or --cache none")
    return lines


def kaggle_lines(m: Machine) -> list[str]:
    if not m.kaggle_cli:
        return ["problem: the kaggle CLI is not installed: pip install kaggle (it downloads "
                "the data and uploads the kernel: kernel --push)"]
    if not m.kaggle_credentials:
        return [f"kaggle CLI: {m.kaggle_cli}",
                "problem: no Kaggle credentials: run `kaggle auth login`, or export "
                "KAGGLE_API_TOKEN (or save it to ~/.kaggle/access_token), or put a legacy "
                "kaggle.json in ~/.kaggle (or export KAGGLE_USERNAME and KAGGLE_KEY)"]
    return [f"kaggle CLI: {m.kaggle_cli}; credentials: {m.kaggle_credentials}"]


def report(m: Machine) -> list[str]:
    return (platform_lines(m) + gpu_lines(m) + package_lines(m.packages) + weights_lines(m)
            + space_lines(m) + kaggle_lines(m))


def requirements(path: Path) -> dict:
    """requirements.txt -> {name: (spec, installed version or None)}."""
    from importlib import metadata

    out = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        found = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", line)
        if not found:
            continue
        name, spec = found.group(1), found.group(2).replace(" ", "")
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        out[name] = (spec, have)
    return out


def count_images(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if e.name.lower().endswith((".jpg", ".png")))
    except OSError:
        return 0


def gather(data: str, workdir: str = ".") -> Machine:
    import shutil

    import torch

    from competition.data.cache import available_memory
    from competition.kaggle.upload import credentials, kaggle_cli
    from competition.model import devices, weights

    gpu = devices.gather()
    cuda_gpus = []
    if gpu.cuda_available:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            cuda_gpus.append({"name": p.name, "memory": p.total_memory,
                              "capability": (p.major, p.minor)})
    root = Path(__file__).resolve().parents[2]
    known = {}
    for preset, key in PRESET_ENCODERS.items():
        files = weights.PRESET_WEIGHTS[key]
        known[preset] = (weights.cached(files), weights.where(files[0][0]))
    folder = Path(data)
    images = (count_images(folder / "train_images"), count_images(folder / "test_images"))
    shm = Path("/dev/shm")
    return Machine(
        python=f"{platform.python_version()} ({sys.executable})", gpu=gpu, cuda_gpus=cuda_gpus,
        packages=requirements(root / "requirements.txt"), weights=known,
        offline=weights.offline_var(), data=data, images=images if images[0] else None,
        shm_free=shutil.disk_usage(shm).free if shm.is_dir() else None,
        memory=available_memory(), disk_free=shutil.disk_usage(workdir).free,
        workdir=str(Path(workdir).resolve()), kaggle_cli=kaggle_cli(),
        kaggle_credentials=credentials())


def cmd_doctor(args) -> None:
    lines = report(gather(args.data))
    print("\n".join(lines))
    problems = sum(line.startswith("problem:") for line in lines)
    print(f"doctor: {problems} problem(s)" if problems else "doctor: no problems found")


def add(sub) -> None:
    """The parser of doctor."""
    p = sub.add_parser("doctor", help="one screen: python, torch/CUDA/driver, GPUs, packages, "
                       "cached weights, space for the caches and a 5-fold run, kaggle CLI")
    p.add_argument("--data", default="input/severstal-steel-defect-detection",
                   help="dataset folder whose images size the caches")
    p.set_defaults(func=cmd_doctor)
