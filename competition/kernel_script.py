"""Severstal: Steel Defect Detection, offline inference kernel.

Written by `python -m competition kernel`, which fills BUNDLE below. On Kaggle, with no
internet: find the competition data and the two datasets under /kaggle/input, install the
code dataset's wheels (pip --no-index --no-deps, into a folder of its own), check the weights
against their manifest, run the fold ensemble with TTA and the tuned post-processing, and
write submission.csv in the working directory.

When Kaggle mounts an input somewhere this script does not look, set its path in PATHS (or
the environment variable named there) and push again; SEVERSTAL_INPUT_ROOT moves the root and
SEVERSTAL_PACKAGES the folder the wheels are installed in.
Standard library only until the wheels are installed.
"""
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

BUNDLE = {"owner": None, "weights": None, "code": None,
          "competition": "severstal-steel-defect-detection"}  # filled by `competition kernel`
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
    """The manifest's model files, each checked against its recorded SHA-256."""
    with open(os.path.join(weights, MARKERS["weights"])) as f:
        manifest = json.load(f)
    paths = []
    for model in manifest["models"]:
        path = os.path.join(weights, model["file"])
        if not os.path.isfile(path) or sha256(path) != model["sha256"]:
            raise SystemExit(f"error: {path}: missing or not the file the bundle was built "
                             "with (an older dataset version?)")
        paths.append(path)
    return paths


def main() -> int:
    start = time.time()
    os.environ.update(OFFLINE)
    root = os.environ.get("SEVERSTAL_INPUT_ROOT", "/kaggle/input")
    found = {kind: find_input(root, kind) for kind in ("data", "weights", "code")}
    for kind, folder in found.items():
        print(f"{kind}: {folder}")
    install(found["code"], os.environ.get("SEVERSTAL_PACKAGES") or
            os.path.join(tempfile.gettempdir(), "severstal-packages"))
    paths = checkpoints(found["weights"])

    import torch

    import competition
    from competition.cli import main as run

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU: slow)"
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, GPU: {gpu}; "
          f"competition {competition.__version__} from {os.path.dirname(competition.__file__)}")
    code = run(["predict", "--data", found["data"], "--checkpoints", ",".join(paths),
                        "--postprocess", os.path.join(found["weights"], "postprocess.json"),
                        "--out", "submission.csv"])
    print(f"kernel: {'submission.csv written' if code == 0 else 'failed'} in "
          f"{time.time() - start:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
