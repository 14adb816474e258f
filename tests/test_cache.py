"""The decoded-image cache: its planes are the decoder's output, cached loaders give the
uncached batches, a stale or half-built disk cache is rebuilt, a cache that does not fit is
refused in one line, a ram cache is removed by a later run only once no process holds it."""
import fcntl
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from competition.data import cache as cache_lib
from competition.data import datasets as data_lib
from competition.train import sampling
from competition.train import fit as train_lib
from competition.data import folds as folds_lib
from competition.train import runtime as runtime_lib
from competition.errors import InputError
from competition.data.images import list_images, read_image
from competition.data.labels import by_image, load_train
from conftest import ROOT
from test_train import folds_csv, tiny  # noqa: F401  (a fixture)


@pytest.fixture
def few(synthetic, tmp_path):
    """A folder of six of the synthetic train images, free to change."""
    folder = tmp_path / "images" / "train_images"
    folder.mkdir(parents=True)
    for name in list_images(synthetic / "train_images")[:6]:
        shutil.copy2(synthetic / "train_images" / name, folder / name)
    return folder


def same_as_decoder(cache, folder) -> bool:
    """Every plane of `cache` is each channel of what read_image decodes, bit for bit."""
    return all(np.array_equal(cache.rgb(name), read_image(folder / name)) and
               np.array_equal(cache.grey(name), read_image(folder / name)[..., 2])
               for name in list_images(folder))


@pytest.mark.parametrize("kind,workers", [("ram", 0), ("ram", 2), ("disk", 2)])
def test_the_cache_holds_exactly_what_the_decoder_returns(synthetic, tmp_path, kind, workers):
    folder = synthetic / "train_images"
    cache = cache_lib.open_cache(kind, folder, tmp_path / "cache", workers)
    assert cache.built and len(cache) == len(list_images(folder)) == 60
    assert same_as_decoder(cache, folder)
    assert len(pickle.dumps(cache)) < 20_000  # a worker gets the path, never the 23 MiB


def batches(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            return out
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_a_cached_loader_gives_the_uncached_batches(synthetic, folds_csv, tmp_path,  # noqa: F811
                                                    workers):
    image_ids, labels = load_train(synthetic)
    train_ids, val_ids = folds_lib.split(folds_csv, 0, image_ids)
    config = tiny(num_workers=workers)
    images = cache_lib.open_cache("ram", synthetic / "train_images", tmp_path, workers)
    rt, encoded = runtime_lib.Runtime(), by_image(labels)
    plain = train_lib.build_loaders(config, synthetic, train_ids, val_ids, encoded, rt)
    cached = train_lib.build_loaders(config, synthetic, train_ids, val_ids, encoded, rt,
                                     images=images)
    for train_loader in (plain[0], cached[0]):
        sampling.set_epoch(train_loader, 1)
    for a, b in zip(plain, cached):  # training crops, then full-size validation images
        for x, y in zip(batches(a, 3), batches(b, 3)):
            assert all(torch.equal(u, v) for u, v in zip(x, y))
    test = synthetic / "test_images"
    names = list_images(test)
    with_cache = data_lib.ImageDataset(test, names, cache_lib.open_cache("ram", test))
    assert all(torch.equal(data_lib.ImageDataset(test, names)[i][0], with_cache[i][0])
               for i in range(len(names)))


def test_a_stale_disk_cache_is_rebuilt(few, tmp_path):
    def open_():
        return cache_lib.open_cache("disk", few, tmp_path / "cache")

    assert open_().built and not open_().built  # built once, then reused
    first = sorted(few.iterdir())[0]
    stat = first.stat()
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched
    assert open_().built and not open_().built
    other = sorted(few.iterdir())[1]
    shutil.copy(other, first)  # changed: another image under this name
    cache = open_()
    assert cache.built and np.array_equal(cache.grey(first.name), cache.grey(other.name))
    shutil.copy2(first, few / "added.jpg")
    cache = open_()
    assert cache.built and len(cache) == 7 and same_as_decoder(cache, few)
    (few / "added.jpg").unlink()
    cache = open_()
    assert cache.built and len(cache) == 6 and same_as_decoder(cache, few)
    assert not open_().built
    cv2.imwrite(str(first), cv2.imread(str(other)))  # same name, new bytes and size
    assert open_().built


def test_an_interrupted_build_is_not_trusted(few, tmp_path, monkeypatch):
    home = tmp_path / "cache" / cache_lib.key(few.resolve())
    decoded = []

    def killed_after_three(path):
        if len(decoded) == 3:
            raise KeyboardInterrupt
        decoded.append(path)
        return read_image(path)

    monkeypatch.setattr(cache_lib, "read_image", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        cache_lib.open_cache("disk", few, tmp_path / "cache")
    assert sorted(p.name for p in home.iterdir()) == ["lock"]  # no index, no (partial) data
    monkeypatch.undo()
    cache = cache_lib.open_cache("disk", few, tmp_path / "cache")
    assert cache.built and same_as_decoder(cache, few)
    # a data file cut short (a copy interrupted, a disk full) is not trusted either
    with open(home / cache_lib.DATA, "r+b") as f:
        f.truncate(cache_lib.PLANE * 2)
    assert cache_lib.open_cache("disk", few, tmp_path / "cache").built
    (home / cache_lib.DATA).unlink()  # an index without its data
    assert cache_lib.open_cache("disk", few, tmp_path / "cache").built


def test_a_cache_that_does_not_fit_is_refused_in_one_line(few, tmp_path, monkeypatch):
    before = set(cache_lib.SHM.glob(f"{cache_lib.RAM_PREFIX}{os.getpid()}-*"))
    monkeypatch.setattr(cache_lib, "available_memory", lambda: 2**20)
    with pytest.raises(InputError) as e:
        cache_lib.open_cache("ram", few)
    text = str(e.value)
    assert "\n" not in text
    assert "6 decoded images need 2.3 MiB" in text and "has 1.0 MiB free" in text
    assert set(cache_lib.SHM.glob(f"{cache_lib.RAM_PREFIX}{os.getpid()}-*")) == before
    monkeypatch.setattr(cache_lib, "free_space", lambda path: 2**20)
    with pytest.raises(InputError, match="--cache disk: 6 decoded images need 2.3 MiB and .* "
                       "has 1.0 MiB free; use --cache none"):
        cache_lib.open_cache("disk", few, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*/images.u8"))


def test_training_refuses_a_ram_cache_that_does_not_fit_before_writing(
        synthetic, folds_csv, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(cache_lib, "available_memory", lambda: 2**20)
    out = tmp_path / "run"
    with pytest.raises(InputError, match="--cache ram: 60 decoded images need 23.4 MiB"):
        train_lib.fit(tiny(cache="ram"), synthetic, 0, out, folds_csv)
    assert not out.exists()


def test_a_colour_image_is_refused_in_one_line(few):
    image = read_image(sorted(few.iterdir())[0])
    image[:10, :10, 0] = 255 - image[:10, :10, 0]
    cv2.imwrite(str(few / "colour.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    with pytest.raises(InputError, match="colour.png: its three colour channels differ"):
        cache_lib.open_cache("ram", few)


def test_a_ram_cache_is_removed_with_its_object_and_a_killed_runs_by_the_next(few):
    cache = cache_lib.open_cache("ram", few)
    path = cache.path
    assert path.is_file() and path.parent == cache_lib.SHM
    del cache
    assert not path.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    orphan = cache_lib.SHM / f"{cache_lib.RAM_PREFIX}{dead}-killed.u8"
    orphan.write_bytes(b"x")
    cache_lib.open_cache("ram", few)
    assert not orphan.exists()


NO_PID = 2**22 + 1  # above Linux's PID_MAX_LIMIT: no process has it


def test_the_sweep_keeps_a_locked_ram_cache_whatever_its_pid_and_removes_an_unlocked_one(
        tmp_path, monkeypatch):
    """A ram cache is alive while a process holds a lock on it, not while the PID in its name
    runs: a locked file named after a PID nobody has (a run in another PID namespace) stays,
    an unlocked one named after a running PID (this process's) goes, and so does the first
    once its lock is dropped (a lock is per open file: this process's second one, the
    sweep's, cannot take it)."""
    monkeypatch.setattr(cache_lib, "SHM", tmp_path)
    held, free = (tmp_path / f"{cache_lib.RAM_PREFIX}{pid}-x.u8" for pid in (NO_PID, os.getpid()))
    free.write_bytes(b"x")
    with open(held, "wb") as holder:
        fcntl.flock(holder, fcntl.LOCK_SH)
        cache_lib.remove_orphans()
        assert held.exists() and not free.exists()
    cache_lib.remove_orphans()
    assert not held.exists()


def test_a_ram_file_swept_before_it_is_locked_is_made_again(tmp_path, monkeypatch):
    """A sweep between mkstemp and flock removes the new file: another is made, rather than
    a cache filled in a file no other run can see."""
    monkeypatch.setattr(cache_lib, "SHM", tmp_path)
    made, real = [], tempfile.mkstemp

    def mkstemp(**kwargs):
        made.append(real(**kwargs))
        if len(made) == 1:
            cache_lib.remove_orphans()
        return made[-1]

    monkeypatch.setattr(cache_lib.tempfile, "mkstemp", mkstemp)
    fd, path = cache_lib.new_ram_file()
    assert len(made) == 2 and path == made[1][1] and os.listdir(tmp_path) == [Path(path).name]
    cache_lib.remove_orphans()
    assert os.path.exists(path)
    cache_lib.release(path, fd, os.getpid())
    assert not os.listdir(tmp_path)


HOLD = """import sys
from pathlib import Path
from competition.data import cache
cache.SHM = Path(sys.argv[1])
held = cache.open_cache("ram", sys.argv[2])
print(held.path, flush=True)
sys.stdin.read()
"""
SWEEP = """import os, sys
from pathlib import Path
from competition.data import cache
cache.SHM = Path(sys.argv[1])
try:
    os.kill(int(sys.argv[2]), 0)
    print("sees the holder")
except ProcessLookupError:
    print("does not see the holder")
cache.remove_orphans()
"""


def test_a_run_in_another_pid_namespace_keeps_a_live_ram_cache(tmp_path, monkeypatch):
    """Two runs sharing /dev/shm in two PID namespaces (containers with --ipc=host): the
    second, which cannot see the first's PID, leaves the first's live cache alone; once the
    first is killed (no finalizer runs), the next sweep removes its file."""
    unshare = ["unshare", "--pid", "--fork", "--map-root-user"]
    probe = (subprocess.run([*unshare, "true"], capture_output=True, text=True)
             if shutil.which("unshare") else None)
    if probe is None or probe.returncode:
        why = "no unshare command" if probe is None else probe.stderr.strip()
        pytest.skip(f"{' '.join(unshare)} is not permitted on this machine: {why}")
    shm, folder = tmp_path / "shm", tmp_path / "images"
    shm.mkdir(), folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((256, 1600), 7, np.uint8))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, shm, folder], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        path = holder.stdout.readline().strip()
        assert path, holder.communicate(timeout=30)[1]
        sweep = subprocess.run([*unshare, sys.executable, "-c", SWEEP, shm, str(holder.pid)],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert sweep.stdout == "does not see the holder\n", sweep.stderr
        assert os.path.exists(path)
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    assert os.path.exists(path)  # killed: no finalizer ran
    monkeypatch.setattr(cache_lib, "SHM", shm)
    cache_lib.remove_orphans()
    assert not os.listdir(shm)


def test_an_unknown_cache_kind_is_refused():
    with pytest.raises(InputError, match="cache 'gpu': valid values are none, ram, disk"):
        tiny(cache="gpu")


def test_predict_with_a_disk_cache_writes_the_same_submission(synthetic, tmp_path):
    from conftest import random_checkpoint, small_test_set
    from test_cli import run

    data = small_test_set(synthetic, tmp_path / "data")
    ckpt = random_checkpoint(tmp_path / "best.pt")
    pp = tmp_path / "postprocess.json"
    pp.write_text(json.dumps({"classes": {c: {"threshold": 0.5, "min_component": 0,
                                              "min_area": 0} for c in "1234"}}))
    args = ["predict", "--data", data, "--checkpoints", ckpt, "--postprocess", pp,
            "--tta", "none", "--workers", 1]
    plain = run(*args, "--out", tmp_path / "plain.csv")
    cached = run(*args, "--out", tmp_path / "cached.csv", "--cache", "disk", "--cache-dir",
                 tmp_path / "cache")
    assert plain.returncode == 0 and cached.returncode == 0, cached.stderr
    assert "cache: disk (built): 4 decoded images of" in cached.stdout
    written = (tmp_path / "cached.csv").read_text()
    assert written == (tmp_path / "plain.csv").read_text()
    assert (pd.read_csv(tmp_path / "cached.csv", keep_default_na=False).EncodedPixels != "").any()


def test_the_config_and_the_cli_offer_exactly_the_cache_kinds_that_exist():
    """config.CACHES (read by the CLI at start-up, without loading OpenCV) names "none" and
    every builder of cache.CACHES, in that order; an unknown kind is one line naming them."""
    from competition.model.config import CACHES

    assert CACHES == ("none", *cache_lib.CACHES)
    with pytest.raises(InputError, match=r"^--cache tmpfs: valid values are none, ram, disk$"):
        cache_lib.open_cache("tmpfs", ".")
