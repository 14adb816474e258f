"""Decoded-image cache: every image of a folder decoded once into one uint8 file that the
loader workers map (numpy memmap) instead of decoding its JPEG again at every epoch.

Severstal's images are grey in three identical channels, so the cache keeps one (256, 1600)
plane per image, a third of the bytes (12,568 train images: 4.8 GiB), and `rgb` makes the
three channels again at use. A plane is exactly what images.read_image returns (each image's
channels are checked equal when it is cached; one that is not is refused), so the batches
of a cached loader equal an uncached one's bit for bit.

- ram: a file in /dev/shm (shared memory) for this run alone, filled before the loader
  workers start and removed when the cache is collected or the process exits (a run killed
  with SIGKILL leaves it; the next ram cache removes it). The run holds a lock (flock) on it
  as long as it lives, and only unlocked files are removed: containers sharing /dev/shm
  (--ipc=host) see each other's files but not each other's PIDs, and flock crosses them.
  The workers map its pages: one copy in memory however many workers there are, whether
  they fork or spawn (a cache pickles as its path and is mapped again on first use).
- disk: CACHE_DIR/<dataset>-<folder>-<hash>/images.u8 and index.json, built once and reused
  by later runs, folds and stages on the same folder. index.json records the decoder
  (OpenCV's version) and every image's name, size and modification time; any difference
  (an image changed, added or removed) or a data file of the wrong size rebuilds it. The
  data is written under a temporary name and renamed, and index.json written after it, each
  atomically, with the old index removed first: an interrupted build leaves no index and is
  never trusted. A lock file serialises processes sharing it (torchrun's ranks).

Either is filled before training with `workers` processes decoding at once, and a cache that
would not fit (ram: available memory and free /dev/shm; disk: free space) is refused with
one line, naming the size needed and the size free, before anything is decoded.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import cv2
import numpy as np

from competition.errors import InputError
from competition.files import atomic_path, write_json
from competition.data.images import HEIGHT, WIDTH, list_images, read_image
from competition.progress import progress

PLANE = HEIGHT * WIDTH  # bytes of one cached image
SHM = Path("/dev/shm")  # Linux's shared memory; the ram cache lives there
RAM_PREFIX = "competition-cache-"  # /dev/shm/competition-cache-<pid>-<random>.u8
DATA, INDEX = "images.u8", "index.json"
VERSION = 1  # of the disk layout; another version rebuilds
CHUNK = 16  # images per task of a filling process


class ImageCache:
    """The grey planes of the images `names` of `folder`, row i of the (n, 256, 1600) uint8
    file `path`. `built`: whether this process decoded them (else an existing disk cache was
    reused). Pickled into a loader worker it carries its path, not its pages."""

    def __init__(self, path: Path, folder: Path, names: list[str], kind: str, built: bool):
        self.path, self.folder, self.names = Path(path), Path(folder), list(names)
        self.rows = {name: i for i, name in enumerate(self.names)}
        self.kind, self.built, self._planes = kind, built, None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_planes": None}

    def __len__(self) -> int:
        return len(self.names)

    @property
    def planes(self) -> np.ndarray:
        """(n, 256, 1600) uint8, mapped read-only on first use in each process."""
        if self._planes is None:
            self._planes = np.memmap(self.path, np.uint8, "r", shape=shape(len(self.names)))
        return self._planes

    def grey(self, name: str) -> np.ndarray:
        """(256, 1600) uint8: the cached plane of image `name` (a view of the mapping)."""
        return self.planes[self.rows[name]]

    def rgb(self, name: str) -> np.ndarray:
        """(256, 1600, 3) uint8: bit for bit what read_image(folder / name) returns."""
        return cv2.cvtColor(self.grey(name), cv2.COLOR_GRAY2RGB)  # 0.03 ms; np.repeat 1.8

    def describe(self) -> str:
        what = "built" if self.built else "reused"
        return (f"cache: {self.kind} ({what}): {len(self)} decoded images of {self.folder}, "
                f"{size(len(self) * PLANE)} in {self.path}")


def shape(n: int) -> tuple[int, int, int]:
    return n, HEIGHT, WIDTH


def size(n_bytes: float) -> str:
    """2.46e6 -> '2.3 MiB'; 5.15e9 -> '4.80 GiB'."""
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def open_cache(kind: str, folder: str | Path, cache_dir: str | Path = "cache",
               workers: int = 0) -> ImageCache | None:
    """The decoded-image cache `kind` (none | ram | disk) of every image of `folder`, filled
    with `workers` processes (0: in this one); None for "none"."""
    if kind != "none" and kind not in CACHES:
        raise InputError(f"--cache {kind}: valid values are none, {', '.join(CACHES)}")
    if kind == "none":
        return None
    folder = Path(folder).resolve()
    names = list_images(folder)
    if not names:
        raise InputError(f"{folder}: no images to cache")
    return CACHES[kind](folder, names, Path(cache_dir), workers)


def available_memory() -> int:
    """Bytes of memory available to a new process without swapping: MemAvailable of
    /proc/meminfo (page cache that can be dropped counts), else the free pages."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            line = next(line for line in f if line.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_space(path: Path) -> int:
    return shutil.disk_usage(path).free


def check_fits(kind: str, n: int, need: int, free: int, where: str) -> None:
    if need > free:
        other = "--cache disk or " if kind == "ram" else ""
        raise InputError(f"--cache {kind}: {n} decoded images need {size(need)} and {where} "
                         f"has {size(free)} free; use {other}--cache none")


def ram_cache(folder: Path, names: list[str], workers: int) -> ImageCache:
    """A cache in /dev/shm for this process alone. Under torchrun every process on this
    machine (LOCAL_WORLD_SIZE) makes its own, so the check counts them all."""
    if not SHM.is_dir():
        raise InputError(f"--cache ram: no {SHM} (shared memory) on this machine; use --cache "
                         "disk or --cache none")
    copies = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    need = len(names) * PLANE * copies
    free = min(available_memory(), free_space(SHM))
    where = "this machine's available memory" + (f" ({copies} processes)" if copies > 1 else "")
    check_fits("ram", len(names), need, free, where + f" (or {SHM})")
    remove_orphans()
    fd, path = new_ram_file()
    try:
        fill(Path(path), folder, names, workers)
    except BaseException:
        release(path, fd, os.getpid())
        raise
    cache = ImageCache(Path(path), folder, names, "ram", built=True)
    weakref.finalize(cache, release, path, fd, os.getpid())  # holds fd (the lock) till then
    return cache


def new_ram_file() -> tuple[int, str]:
    """A new empty file in /dev/shm, open and share-locked (flock) by this process: the lock
    is what tells every other run's remove_orphans that the cache is in use (the finalizer
    keeps the descriptor open till the cache goes; forked workers inherit it). A sweep can
    lock and remove the file between mkstemp and flock: then, once it lets go, the name no
    longer leads to the file locked here, and another file is made."""
    while True:
        fd, path = tempfile.mkstemp(prefix=f"{RAM_PREFIX}{os.getpid()}-", suffix=".u8", dir=SHM)
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits for a sweep holding it
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.stat(path), os.fstat(fd)):
                return fd, path
        os.close(fd)


def release(path: str, fd: int, pid: int) -> None:
    """Remove a ram cache and drop its lock, from the process that made it only (never a
    forked worker)."""
    if os.getpid() == pid:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        os.close(fd)


def remove_orphans() -> None:
    """Remove the ram caches this user's killed runs left in /dev/shm (no finalizer ran):
    those no process holds a lock on. Never by the PID in the name: a run in another
    container sharing /dev/shm has a PID this one cannot see (or sees as another process).
    The file is removed while locked, so a run making it (new_ram_file) sees it gone."""
    for path in SHM.glob(f"{RAM_PREFIX}*.u8"):
        with contextlib.suppress(OSError):  # gone, another user's, or locked (BlockingIOError)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                if os.fstat(fd).st_uid == os.getuid():
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    os.remove(path)
            finally:
                os.close(fd)


def disk_cache(folder: Path, names: list[str], cache_dir: Path, workers: int) -> ImageCache:
    """The cache of `folder` under `cache_dir`: reused when its index matches the images
    now on disk, else rebuilt (under a lock, so one process builds and the others wait)."""
    home = cache_dir / key(folder)
    home.mkdir(parents=True, exist_ok=True)
    wanted = index_of(folder, names)
    with locked(home / "lock"):
        if trusted(home, wanted):
            return ImageCache(home / DATA, folder, names, "disk", built=False)
        for stale in (home / INDEX, home / DATA):  # the index first: never one without data
            stale.unlink(missing_ok=True)
        check_fits("disk", len(names), len(names) * PLANE, free_space(home), str(home))
        with atomic_path(home / DATA) as tmp:
            fill(tmp, folder, names, workers)
        write_json(home / INDEX, wanted)
    return ImageCache(home / DATA, folder, names, "disk", built=True)


def key(folder: Path) -> str:
    """A folder name per image folder: readable, and unique by its absolute path."""
    digest = hashlib.sha1(str(folder).encode()).hexdigest()[:10]
    return f"{folder.parent.name}-{folder.name}-{digest}"


def index_of(folder: Path, names: list[str]) -> dict:
    """What a disk cache of these images must have been built from: the layout, the decoder
    and each image's (name, size in bytes, modification time in ns)."""
    stats = [os.stat(folder / name) for name in names]
    return {"version": VERSION, "decoder": f"opencv {cv2.__version__}", "folder": str(folder),
            "shape": [HEIGHT, WIDTH], "dtype": "uint8",
            "images": [[n, s.st_size, s.st_mtime_ns] for n, s in zip(names, stats)]}


def trusted(home: Path, wanted: dict) -> bool:
    """Whether home's cache was completely built from exactly the images `wanted` lists."""
    try:
        index = json.loads((home / INDEX).read_text())
        size = (home / DATA).stat().st_size
    except (OSError, ValueError):
        return False
    return index == wanted and size == len(wanted["images"]) * PLANE


@contextlib.contextmanager
def locked(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fill(path: Path, folder: Path, names: list[str], workers: int) -> None:
    """Make `path` a (n, 256, 1600) uint8 file and decode image i of `names` into row i,
    in chunks, `workers` processes at once (0: here); flushed to the file at the end."""
    planes = np.memmap(path, np.uint8, "w+", shape=shape(len(names)))
    jobs = [(str(folder), names[i:i + CHUNK], i) for i in range(0, len(names), CHUNK)]
    bar = progress(total=len(names), desc="cache images", unit="img")
    if workers:
        with multiprocessing.Pool(min(workers, len(jobs)), open_rows, (str(path), len(names))) \
                as pool:
            for done in pool.imap_unordered(write_rows, jobs):
                bar.update(done)
    else:
        for job in jobs:
            bar.update(write_rows(job, planes))
    bar.close()
    planes.flush()
    del planes


_planes = None  # a filling process's writable mapping of the file (open_rows)


def open_rows(path: str, n: int) -> None:
    global _planes
    _planes = np.memmap(path, np.uint8, "r+", shape=shape(n))


def write_rows(job: tuple[str, list[str], int], planes: np.ndarray | None = None) -> int:
    """Decode the images of a job (folder, names, first row) into their rows of `planes`
    (a filling process: its own mapping); returns how many."""
    folder, names, start = job
    planes = _planes if planes is None else planes
    for i, name in enumerate(names, start):
        planes[i] = grey_plane(Path(folder) / name)
    return len(names)


def grey_plane(path: Path) -> np.ndarray:
    """(256, 1600) uint8: the one plane of a grey image as read_image decodes it, whose three
    channels must be equal for the cache to give it back bit for bit."""
    image = read_image(path)
    grey = image[..., 0]
    if not ((image[..., 1] == grey).all() and (image[..., 2] == grey).all()):
        raise InputError(f"{path}: its three colour channels differ, and the image cache keeps "
                         "one grey plane per image; use --cache none")
    return grey


# kind -> builder(folder, names, cache_dir, workers); "none" is no cache. The names are
# config.CACHES too (that module is imported by the CLI at start-up; this one loads OpenCV)
CACHES = {"ram": lambda folder, names, cache_dir, workers: ram_cache(folder, names, workers),
          "disk": disk_cache}
