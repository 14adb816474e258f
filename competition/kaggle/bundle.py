"""The Kaggle submission bundle: trained folds -> two datasets and an offline kernel.

`build` writes three folders under `out` (the whole of `out` is written beside it under a
temporary name and renamed into place, so a failed build leaves the previous bundle):

  weights/  fold<k>.pt (the weights inference uses, EMA where kept; no optimizer state),
            fold<k>.config.json, postprocess.json, severstal-bundle.json (the manifest, with
            each file's SHA-256) and dataset-metadata.json
  code/     this package as a wheel, wheels of what the Kaggle image lacks or has in another
            version (pip download, pure Python, pinned to the versions installed here) and
            dataset-metadata.json
  kernel/   <name>-inference.py (kernel_script.py with its inputs filled in) and
            kernel-metadata.json (a GPU script with the internet off, on the machine_shape
            asked for: a T4 by default)

`rehearse` runs the kernel script here as Kaggle would, on a simulated /kaggle/input made of
links to a local dataset and the bundle, with the network cut off, validates its output and
records in OUT/rehearsed.json the digest of every file of the three folders it ran: upload.py
pushes only a bundle whose files are still those. A rebuilt bundle is not rehearsed (the
record goes with the old folder); the record of its last upload (OUT/pushed.json) is kept.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from competition import __version__
from competition.kaggle import kernel_script
from competition.errors import InputError
from competition.files import atomic_dir, write_json
from competition.kaggle.kernel_script import sha256

COMPETITION = kernel_script.BUNDLE["competition"]
MANIFEST = kernel_script.MARKERS["weights"]
LICENSE = "CC0-1.0"  # the kaggle CLI's default dataset licence
DEFAULT_WHEELS = ("segmentation-models-pytorch", "timm")  # pinned to the installed versions
SCRIPT_TEMPLATE = Path(kernel_script.__file__)
BUNDLE_LINE = re.compile(r"^BUNDLE = \{.*?\}  # filled by `competition kernel`$", re.M | re.S)
TIME_LIMIT_LINE = re.compile(r"^TIME_LIMIT_MIN = [0-9.]+(?=  #)", re.M)
DEFAULT_TIME_LIMIT = 55.0  # minutes of Kaggle's 60, the rest a margin for start-up and writing
NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# Kaggle's machine_shape values (kernel-metadata.json, `kaggle kernels push --accelerator`) for
# the NVIDIA GPUs that the image's torch can run, from kaggle-cli's docs/kernels.md (Feb 2026;
# some are for some competitions only). The first, "GPU T4 x2" in the notebook editor, is the
# default: fp16, no native bf16. Left out: NvidiaTeslaP100, which torch 2.10 (CUDA 12.8) has
# no sm_60 kernels for, NvidiaTeslaT4Highmem (admins only) and the TPUs (no CUDA). Without a
# machine_shape, `enable_gpu` alone may be given a P100.
ACCELERATORS = ("NvidiaTeslaT4", "NvidiaL4", "NvidiaL4X1", "NvidiaTeslaA100", "NvidiaH100",
                "NvidiaRtxPro6000")
DEFAULT_ACCELERATOR = ACCELERATORS[0]
REHEARSED = "rehearsed.json"  # OUT/: the files a rehearsal ran, by digest (rehearse)
PUSHED = "pushed.json"  # OUT/: the datasets an upload created (upload.push), kept by build


def slugs(name: str) -> dict[str, str]:
    """--name -> the weights dataset, code dataset and kernel slugs."""
    if not NAME.match(name) or not 3 <= len(name) <= 40:
        raise InputError(f"--name {name!r}: needs 3 to 40 lowercase letters, digits and single "
                         "hyphens (it starts the Kaggle slugs, at most 50 characters)")
    return {"weights": f"{name}-weights", "code": f"{name}-code", "kernel": f"{name}-inference"}


def title(slug: str) -> str:
    """'severstal-r34-inference' -> 'severstal r34 inference', which Kaggle slugifies back."""
    return slug.replace("-", " ")


def model_names(paths: list[Path]) -> list[str]:
    """folds/fold0/best.pt -> 'fold0' (the run folder); 'unet-fold0' (run and fold) when
    several runs share fold names; model<i> when those repeat too."""
    for names in ([p.parent.name or p.stem for p in paths],
                  [f"{p.parent.parent.name}-{p.parent.name}" for p in paths]):
        if len(set(names)) == len(names) and all(OWNER.match(n) for n in names):
            return names
    return [f"model{i}" for i in range(len(paths))]


def write_weights(folder: Path, paths: list[Path], postprocess: Path, owner: str,
                  slug: str, weights=None, classifiers=(), classifier_weights=None) -> dict:
    """Slim checkpoints, configs, postprocess.json and the manifest (each model's file,
    role (segment or classify), weight in its average, SHA-256). Every slim file is loaded
    back as the kernel will load it (each of its task), and the gates of postprocess.json
    must find the image-level probabilities they read among these models."""
    import torch

    from competition.model import checkpoint
    from competition.infer.ensemble import load_ensemble, parse_tta
    from competition.infer.predict import check_sources
    from competition.infer.search import read_params

    params = read_params(postprocess)
    if params.tta:
        parse_tta(params.tta, source=f"{postprocess}: \"tta\"")
    everything = list(paths) + list(classifiers)
    roles = ["segment"] * len(paths) + ["classify"] * len(classifiers)
    shares = list(weights or [1.0] * len(paths)) + list(
        classifier_weights or [1.0] * len(classifiers))
    models = []
    for path, name, role, share in zip(everything, model_names(everything), roles, shares):
        state = checkpoint.load(path)
        config = checkpoint.config_of(state, path)
        slim = {"config": state["config"], "model": state.get("ema") or state["model"],
                "epoch": state.get("epoch"), "score": state.get("score")}
        checkpoint.save(folder / f"{name}.pt", slim)
        write_json(folder / f"{name}.config.json", state["config"])
        score = state.get("score") or {}
        models.append({"file": f"{name}.pt", "source": str(path), "role": role,
                       "weight": float(share), "arch": config.arch, "encoder": config.encoder,
                       "epoch": state.get("epoch"), "val_dice": score.get("mean_dice"),
                       "val_score": score.get("score"),
                       "sha256": sha256(folder / f"{name}.pt"),
                       "bytes": (folder / f"{name}.pt").stat().st_size})
    write_json(folder / "postprocess.json", bundled(postprocess, folder, models))
    cpu = torch.device("cpu")
    seg = [m for m in models if m["role"] == "segment"]
    cls = [m for m in models if m["role"] == "classify"]
    check_sources(params, load_ensemble([folder / m["file"] for m in seg], cpu),
                  load_ensemble([folder / m["file"] for m in cls], cpu, task="classify")
                  if cls else None, str(postprocess))
    manifest = {"format": 2, "package": {"name": "competition", "version": __version__},
                "models": models, "postprocess": "postprocess.json",
                "tta": list(params.tta) if params.tta else None,
                "built_with": {"python": sys.version.split()[0],
                               **{d: metadata.version(d) for d in ("torch", *DEFAULT_WHEELS)}}}
    write_json(folder / MANIFEST, manifest)
    dataset_metadata(folder, owner, slug, f"severstal weights {len(models)} models")
    return manifest


def dataset_metadata(folder: Path, owner: str, slug: str, heading: str) -> None:
    """dataset-metadata.json as `kaggle datasets create` reads it: id, a title of 6 to 50
    characters and exactly one licence."""
    meta = {"title": heading[:50], "id": f"{owner}/{slug}", "licenses": [{"name": LICENSE}]}
    write_json(folder / "dataset-metadata.json", meta)


def dataset_ref(folder: Path) -> str:
    """'owner/slug' of a dataset folder, from its dataset-metadata.json."""
    return json.loads((folder / "dataset-metadata.json").read_text())["id"]


def pinned(spec: str) -> str:
    """'timm' -> 'timm==<the version installed here>'; a spec with a version is kept."""
    if re.search(r"[=<>!~@]", spec):
        return spec
    try:
        return f"{spec}=={metadata.version(spec)}"
    except metadata.PackageNotFoundError:
        raise InputError(f"--wheels {spec}: not installed here, so its version is unknown; "
                         f"give one ({spec}==X.Y)") from None


def pip(args: list[str], what: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
                          capture_output=True, text=True)
    if done.returncode != 0:  # pip's last ERROR line says why (its warnings come first)
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines
        raise InputError(f"{what}: pip failed: {errors[-1] if errors else done.returncode}")


def package_source() -> Path:
    """The checkout this package runs from (its pyproject.toml builds the wheel)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise InputError(f"{root}: no pyproject.toml: run `python -m competition kernel` from "
                         "a checkout of the pipeline")
    return root


def write_code(folder: Path, wheels: tuple | list, wheelhouse: Path | None, owner: str,
               slug: str) -> list[str]:
    """This package's wheel (built from a copy of its source, so no build/ is left in the
    checkout) and the pinned extra wheels, downloaded with --no-deps."""
    root = package_source()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(root / "competition", src / "competition",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copy(root / "pyproject.toml", src / "pyproject.toml")
        build = ["wheel", "--no-deps", "-q", "-w", str(folder), str(src)]
        if importlib.util.find_spec("setuptools"):  # build offline; else pip fetches it
            build.insert(1, "--no-build-isolation")
        pip(build, "building the wheel")
    if wheels:
        source = (["--no-index", "--find-links", str(wheelhouse)] if wheelhouse else [])
        pip(["download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder), *source,
             *[pinned(w) for w in wheels]], f"--wheels {','.join(wheels)}")
    names = sorted(p.name for p in folder.glob("*.whl"))
    for name in names:
        if not name.endswith("-none-any.whl"):
            print(f"warning: {name} is not pure Python: it installs on Kaggle only if Kaggle's "
                  "Python version and platform match this machine's")
    dataset_metadata(folder, owner, slug, "severstal code wheels")
    return names


def check_accelerator(accelerator: str) -> None:
    """Kaggle takes any machine_shape string and falls back silently on one it does not know."""
    if accelerator not in ACCELERATORS:
        raise InputError(f"--accelerator {accelerator!r}: not a Kaggle GPU this kernel runs on; "
                         f"choose one of {', '.join(ACCELERATORS)} (NvidiaTeslaP100 has no "
                         "kernels in Kaggle's torch, TPUs no CUDA)")


def write_kernel(folder: Path, owner: str, names: dict[str, str],
                 accelerator: str = DEFAULT_ACCELERATOR,
                 time_limit: float = DEFAULT_TIME_LIMIT) -> Path:
    """The kernel script (BUNDLE and TIME_LIMIT_MIN filled in) and kernel-metadata.json,
    asking for `accelerator` as its machine_shape (kaggle >= 1.8.4 reads it; `enable_gpu`
    alone may get a P100)."""
    template = SCRIPT_TEMPLATE.read_text()
    bundle = {"owner": owner, "weights": names["weights"], "code": names["code"],
              "competition": COMPETITION}
    script, n = BUNDLE_LINE.subn(f"BUNDLE = {bundle!r}", template)
    assert n == 1, f"{SCRIPT_TEMPLATE}: expected one BUNDLE line, found {n}"
    script, n = TIME_LIMIT_LINE.subn(f"TIME_LIMIT_MIN = {float(time_limit)!r}", script)
    assert n == 1, f"{SCRIPT_TEMPLATE}: expected one TIME_LIMIT_MIN line, found {n}"
    code_file = f"{names['kernel']}.py"
    (folder / code_file).write_text(script)
    meta = {"id": f"{owner}/{names['kernel']}", "title": title(names["kernel"]),
            "code_file": code_file, "language": "python", "kernel_type": "script",
            "is_private": "true", "enable_gpu": "true", "enable_tpu": "false",
            "machine_shape": accelerator,
            # written out: the kaggle CLI turns the internet on when this key is missing
            "enable_internet": "false",
            "dataset_sources": [f"{owner}/{names['weights']}", f"{owner}/{names['code']}"],
            "competition_sources": [COMPETITION], "kernel_sources": [], "model_sources": []}
    write_json(folder / "kernel-metadata.json", meta)
    return folder / code_file


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def bundled(postprocess: Path, folder: Path, models: list[dict]) -> dict:
    """The bundle's postprocess.json: the file's, with "ensemble" naming the bundle's own
    files (slimmed, so of other content than the checkpoints oof digested) and their
    weights, so that the kernel's predict checks it runs exactly these (infer/tuned.py);
    the ensemble oof recorded is kept as "tuned_on". `kernel` checked them against it
    before (or was told --allow-other-models)."""
    from competition.data.provenance import file_digest

    result = json.loads(Path(postprocess).read_text())
    members = {role: [{"checkpoint": m["file"], "weight": m["weight"],
                       "sha256": file_digest(folder / m["file"])}
                      for m in models if m["role"] == kind]
               for role, kind in (("segmenters", "segment"), ("classifiers", "classify"))}
    return {**result, "ensemble": {"bundle": members}, "tuned_on": result.get("ensemble")}


def build(owner: str, checkpoints: list[Path], postprocess: Path, out: Path,
          name: str = "severstal-deeplabv3", wheels: tuple | list = DEFAULT_WHEELS,
          wheelhouse: Path | None = None, accelerator: str = DEFAULT_ACCELERATOR,
          time_limit: float = DEFAULT_TIME_LIMIT, weights=None, classifiers=(),
          classifier_weights=None) -> dict:
    """Write the bundle to `out` (replacing a previous bundle, refusing any other folder), the
    kernel asking for `accelerator` (a machine_shape) and stopping when its projected run
    passes `time_limit` minutes. The segmenters `checkpoints` and the `classifiers` are
    averaged with their weights (None: equal), as `predict` averages them.
    Returns {folder kind: (path, bytes)} for the three folders."""
    check_accelerator(accelerator)
    if not 0 < time_limit <= 60:
        raise InputError(f"--time-limit {time_limit}: minutes in (0, 60]; Kaggle stops a "
                         "kernel at 60")
    if not OWNER.match(owner):
        raise InputError(f"--owner {owner!r}: not a Kaggle user name (letters, digits, - and _)")
    names = slugs(name)
    if out.exists() and any(out.iterdir()) and not (out / "weights" / MANIFEST).is_file():
        raise InputError(f"{out}: exists and is not a bundle made by this command; give "
                         "another --out (the folder is replaced as a whole)")
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise InputError(f"--wheelhouse {wheelhouse}: no such folder")
    pushed = (out / PUSHED).read_bytes() if (out / PUSHED).is_file() else None
    with atomic_dir(out) as tmp:
        if pushed is not None:  # which datasets exist on Kaggle: `version`, not `create`
            (tmp / PUSHED).write_bytes(pushed)
        for kind in ("weights", "code", "kernel"):
            (tmp / kind).mkdir()
        write_weights(tmp / "weights", checkpoints, postprocess, owner, names["weights"],
                      weights, classifiers, classifier_weights)
        write_code(tmp / "code", wheels, wheelhouse, owner, names["code"])
        write_kernel(tmp / "kernel", owner, names, accelerator, time_limit)
    return {kind: (out / kind, size(out / kind)) for kind in ("weights", "code", "kernel")}


# Put first on PYTHONPATH in a rehearsal: every Python process (the kernel, pip, loader
# workers) fails to open an internet socket; local sockets still work.
OFFLINE_GUARD = """import socket
_connect = socket.socket.connect
def _offline(self, *args):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        raise OSError("network access from an offline kernel rehearsal")
    return _connect(self, *args)
socket.socket.connect = _offline
"""


def network_cut() -> list[str]:
    """`unshare -rn` (a network namespace with no interfaces) where the machine allows it."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"],
                                                  capture_output=True).returncode == 0:
        return ["unshare", "-rn"]
    return []


def rehearse(out: Path, data: Path, folder: Path, layout: str = "new") -> Path:
    """Run out/kernel's script on `data` (test_images/, sample_submission.csv) as Kaggle
    would: inputs at /kaggle/input's places (`layout` "new": competitions/<slug> and
    datasets/<owner>/<slug>; "classic": <slug>), no network, an empty working directory.
    Returns the validated working/submission.csv. `folder` is replaced."""
    from competition.data.submission import validate

    out, folder = out.resolve(), folder.resolve()  # the kernel runs in folder/working
    meta = json.loads((out / "kernel" / "kernel-metadata.json").read_text())
    for name in ("test_images", "sample_submission.csv"):
        if not (data / name).exists():
            raise InputError(f"--check {data}: no {name} (a dataset folder in Kaggle layout)")
    (out / REHEARSED).unlink(missing_ok=True)  # until this rehearsal passes
    files = bundle_files(out)
    if folder.exists():
        shutil.rmtree(folder)
    root = folder / "input"
    new = layout == "new"
    competition = root / "competitions" / COMPETITION if new else root / COMPETITION
    competition.mkdir(parents=True)
    for name in ("test_images", "sample_submission.csv"):
        (competition / name).symlink_to((data / name).resolve())
    for kind in ("weights", "code"):
        owner, slug = dataset_ref(out / kind).split("/")
        link = root / "datasets" / owner / slug if new else root / slug
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(out / kind)
    for name in ("working", "guard"):
        (folder / name).mkdir()
    (folder / "guard" / "sitecustomize.py").write_text(OFFLINE_GUARD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEVERSTAL_", "PYTHON"))}
    env.update(SEVERSTAL_INPUT_ROOT=str(root), SEVERSTAL_PACKAGES=str(folder / "packages"),
               PYTHONPATH=str(folder / "guard"), SEVERSTAL_ALLOW_CPU="1")  # no GPU here
    cut = network_cut()
    print(f"rehearsal: {root} ({layout} layout), network cut by "
          f"{'unshare -rn and ' if cut else ''}a socket guard", flush=True)
    script = out / "kernel" / meta["code_file"]
    done = subprocess.run([*cut, sys.executable, str(script)], cwd=folder / "working", env=env)
    result = folder / "working" / "submission.csv"
    if done.returncode != 0 or not result.is_file():
        raise InputError(f"{script}: the kernel failed in the rehearsal (exit status "
                         f"{done.returncode}); its output is above")
    validate(result, data / "sample_submission.csv")
    changed = changes(files, out)
    if changed:
        raise InputError(f"{changed}: changed while the kernel was rehearsed; build again")
    write_json(out / REHEARSED, {"data": str(data), "layout": layout,
                                 "submission_sha256": sha256(str(result)), "files": files})
    return result


def bundle_files(out: Path) -> dict[str, str]:
    """{path under out: SHA-256} of every file of weights/, code/ and kernel/."""
    return {str(p.relative_to(out)): sha256(str(p)) for kind in ("weights", "code", "kernel")
            for p in sorted((out / kind).rglob("*")) if p.is_file()}


def changes(files: dict[str, str], out: Path) -> str | None:
    """The first file of the bundle in `out` that is not as `files` records it (changed,
    added or removed), as a path, or None."""
    now = bundle_files(out)
    return next((str(out / name) for name in sorted(set(files) | set(now))
                 if files.get(name) != now.get(name)), None)
