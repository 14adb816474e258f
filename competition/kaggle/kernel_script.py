"""Severstal: Steel Defect Detection, offline inference kernel.

Written by `python -m competition kernel`, which fills BUNDLE below. On Kaggle, with no
internet: find the competition data and the two datasets under /kaggle/input, install the
code dataset's wheels (pip --no-index --no-deps, into a folder of its own), check the weights
against their manifest, run the fold ensemble with TTA and the tuned post-processing, and
write submission.csv in the working directory.

It needs a GPU that Kaggle's torch can run: today's image (torch 2.10, CUDA 12.8) has no
kernels for the P100 (sm_60), so choose "GPU T4 x2" in the notebook's Settings > Accelerator
(machine_shape "NvidiaTeslaT4" in kernel-metadata.json). Without such a GPU it stops at once
with one line saying what it found. SEVERSTAL_ALLOW_CPU=1 lets it run on the CPU instead (the
offline rehearsal sets it; a CPU run of the real test set would not finish within the hour).

Kaggle stops a kernel at 60 minutes without a word. After its first batches the prediction
prints its rate and the projected time, and stops with one line as soon as the projection
passes what is left of TIME_LIMIT_MIN (counted from this script's start).

When Kaggle mounts an input somewhere this script does not look, set its path in PATHS (or
the environment variable named there) and push again; SEVERSTAL_INPUT_ROOT moves the root and
SEVERSTAL_PACKAGES the folder the wheels are installed in.
Standard library only until the wheels are installed.
"""
import glob
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

BUNDLE = {"owner": None, "weights": None, "code": None,
          "competition": "severstal-steel-defect-detection"}  # filled by `competition kernel`
TIME_LIMIT_MIN = 55.0  # the kernel's whole run; `competition kernel --time-limit` sets it
PATHS = {"data": os.environ.get("SEVERSTAL_DATA"),        # folder with test_images/
         "weights": os.environ.get("SEVERSTAL_WEIGHTS"),  # folder with severstal-bundle.json
         "code": os.environ.get("SEVERSTAL_CODE")}        # folder with the .whl files
MARKERS = {"data": "sample_submission.csv", "weights": "severstal-bundle.json",
           "code": "competition-*.whl"}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "NO_ALBUMENTATIONS_UPDATE": "1", "PIP_NO_INDEX": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def candidates(root: str, kind: str) -> list:
    """The folders Kaggle mounts an input at, in the order they are tried."""
    if kind == "data":
        slug = BUNDLE["competition"]
        return [os.path.join(root, slug), os.path.join(root, "competitions", slug)]
    slug = BUNDLE[kind]
    return [os.path.join(root, slug), os.path.join(root, "datasets", BUNDLE["owner"], slug),
            *sorted(glob.glob(os.path.join(root, "datasets", "*", slug)))]


def has_marker(folder: str, kind: str) -> bool:
    return bool(glob.glob(os.path.join(glob.escape(folder), MARKERS[kind])))


def find_input(root: str, kind: str) -> str:
    """The folder of input `kind` (data, weights or code): PATHS when set, else the first
    known layout holding its marker file, else any folder under `root` (4 levels) holding it."""
    if PATHS[kind]:
        if not has_marker(PATHS[kind], kind):
            raise SystemExit(f"error: PATHS[{kind!r}] = {PATHS[kind]}: no {MARKERS[kind]} there")
        return PATHS[kind]
    tried = candidates(root, kind)
    for folder in tried:
        if has_marker(folder, kind):
            return folder
    for depth in range(1, 5):
        found = sorted(glob.glob(os.path.join(glob.escape(root), *["*"] * depth, MARKERS[kind])))
        if found:
            print(f"note: {kind} found at {os.path.dirname(found[0])}, not at a usual place")
            return os.path.dirname(found[0])
    raise SystemExit(f"error: no {kind} input ({MARKERS[kind]}) under {root}; looked in "
                     f"{', '.join(tried)} and 4 levels below {root}. Add the input to the "
                     f"kernel, or set PATHS[{kind!r}] at the top of this script")


def install(code: str, target: str) -> None:
    """Every wheel of the code dataset into `target`, offline, put first on sys.path."""
    wheels = sorted(glob.glob(os.path.join(glob.escape(code), "**", "*.whl"), recursive=True))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                    "--quiet", "--upgrade", "--target", target, *wheels], check=True)
    sys.path.insert(0, target)
    print(f"installed {len(wheels)} wheels from {code}: "
          f"{', '.join(os.path.basename(w).split('-')[0] for w in wheels)}")


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoints(weights: str) -> list:
    """The manifest's models as (role, path, weight), each file checked against its recorded
    SHA-256 (a manifest before roles: segmenters of weight 1)."""
    with open(os.path.join(weights, MARKERS["weights"])) as f:
        manifest = json.load(f)
    models = []
    for model in manifest["models"]:
        path = os.path.join(weights, model["file"])
        if not os.path.isfile(path) or sha256(path) != model["sha256"]:
            raise SystemExit(f"error: {path}: missing or not the file the bundle was built "
                             "with (an older dataset version?)")
        models.append((model.get("role", "segment"), path, model.get("weight", 1.0)))
    return models


def model_args(models: list) -> list:
    """predict's options for the bundle's models: each file its own part, with its weight."""
    args = []
    for role, option in (("segment", "--checkpoints"), ("classify", "--classifiers")):
        chosen = [(p, w) for r, p, w in models if r == role]
        if chosen:
            weights = "--weights" if role == "segment" else "--classifier-weights"
            args += [option, ",".join(glob.escape(p) for p, _ in chosen),
                     weights, ",".join(repr(float(w)) for _, w in chosen)]
    return args


def runs_on(capability: tuple, arch_list: list) -> bool:
    """Whether a torch built for `arch_list` (torch.cuda.get_arch_list(): 'sm_75', 'sm_90a',
    'compute_90') has code for a GPU of compute capability (major, minor): a binary for sm_XY
    runs on major X with minor >= Y; PTX compute_XY is compiled for any capability >= X.Y."""
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)[a-z]?", arch)
        if not match:
            continue
        built = divmod(int(match.group(2)), 10)  # 'sm_120' -> (12, 0)
        if match.group(1) == "sm" and built[0] == capability[0] and built[1] <= capability[1]:
            return True
        if match.group(1) == "compute" and built <= tuple(capability):
            return True
    return False


def gpu_problem(name, capability, arch_list: list, torch_version: str, allow_cpu: bool):
    """None when inference can go on, else the one line that stops the kernel. name is None
    when torch sees no GPU. A P100 (sm_60) under a torch built without sm_60 passes
    torch.cuda.is_available() and then fails every kernel launch ("no kernel image is available
    for execution on the device"), so it is refused here, before any inference."""
    choose = ('choose "GPU T4 x2" in the notebook\'s Settings > Accelerator (machine_shape '
              '"NvidiaTeslaT4" in kernel-metadata.json) and run it again')
    if name is None:  # (torch 2.10's get_arch_list() is empty without a GPU)
        if allow_cpu:
            return None
        return (f"error: no GPU visible to torch {torch_version}: {choose} "
                "(SEVERSTAL_ALLOW_CPU=1 runs on the CPU, far too slow for the real test set)")
    if not runs_on(capability, arch_list):
        return (f"error: GPU {name} (sm_{capability[0]}{capability[1]}) cannot run torch "
                f"{torch_version}, built for {' '.join(arch_list) or 'no GPU'}: {choose}")
    return None


def check_gpu(torch) -> str:
    """The GPU inference will use ('Tesla T4 (sm_75)', or the CPU where SEVERSTAL_ALLOW_CPU=1
    allows it); stops the kernel with gpu_problem's line when torch cannot use it."""
    cuda = torch.cuda
    found = cuda.is_available()
    name = cuda.get_device_name(0) if found else None
    capability = tuple(cuda.get_device_capability(0)) if found else None
    problem = gpu_problem(name, capability, list(cuda.get_arch_list()), torch.__version__,
                          os.environ.get("SEVERSTAL_ALLOW_CPU") == "1")
    if problem:
        raise SystemExit(problem)
    return f"{name} (sm_{capability[0]}{capability[1]})" if found else \
        "none (CPU, SEVERSTAL_ALLOW_CPU=1)"


def run(argv: list, packages: str) -> int:
    """`python -m competition ARGV` with the wheels installed in `packages` first on its path
    (-P: not the working directory): the package's own front door, as on any machine. Its
    output goes to this kernel's log; returns its exit status."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (packages, os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-P", "-m", "competition", *argv], env=env).returncode


def main() -> int:
    start = time.time()
    os.environ.update(OFFLINE)
    root = os.environ.get("SEVERSTAL_INPUT_ROOT", "/kaggle/input")
    found = {kind: find_input(root, kind) for kind in ("data", "weights", "code")}
    for kind, folder in found.items():
        print(f"{kind}: {folder}")
    packages = (os.environ.get("SEVERSTAL_PACKAGES") or
                os.path.join(tempfile.gettempdir(), "severstal-packages"))
    install(found["code"], packages)
    models = checkpoints(found["weights"])

    import torch

    gpu = check_gpu(torch)  # before any inference: a GPU torch cannot run fails every call

    import competition

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, GPU: {gpu}; "
          f"competition {competition.__version__} from {os.path.dirname(competition.__file__)}")
    left = TIME_LIMIT_MIN - (time.time() - start) / 60  # what the set-up left of the limit
    code = run(["predict", "--data", found["data"], *model_args(models),
                "--postprocess", os.path.join(found["weights"], "postprocess.json"),
                "--out", "submission.csv", "--time-limit", f"{max(left, 0.01):.3f}"], packages)
    print(f"kernel: {'submission.csv written' if code == 0 else 'failed'} in "
          f"{time.time() - start:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
