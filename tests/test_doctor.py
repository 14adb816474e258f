"""`doctor` (cli/doctor.py): made-up machines give the lines and problems worked out here;
the command itself exits 0 with one screen."""
from competition.cli import doctor, main
from competition.cli.doctor import Machine, report
from competition.model.devices import Facts

GIB = 2**30
GOOD = dict(python="3.11.7", gpu=Facts(torch_cuda="13.0", torch_version="2.14.1+cu130"),
            packages={"torch": ("==2.14.1", "2.14.1+cu130"), "numpy": (">=2.0,<2.5", "2.2.6")},
            weights={"deeplabv3_r34": (True, "/hf")}, data="input/x", images=None,
            shm_free=30 * GIB, memory=60 * GIB, disk_free=100 * GIB, workdir="/w",
            kaggle_cli="/bin/kaggle", kaggle_credentials="~/.kaggle/kaggle.json")


def problems(**changes) -> list[str]:
    return [line for line in report(Machine(**{**GOOD, **changes}))
            if line.startswith("problem:")]


def test_a_good_cpu_machine_has_no_problem():
    lines = report(Machine(**GOOD))
    assert problems() == []
    assert "NVIDIA driver: none" in lines
    # 12,568 x 256 x 1600 B = 5,147,852,800 B = 4.79 GiB; with 5,506 test: 6.89 GiB
    assert any("--cache ram needs 4.79 GiB (12,568 x 409,600 B)" in line for line in lines)
    assert any("--cache disk needs 6.89 GiB (18,074 x 409,600 B)" in line for line in lines)
    # 5 folds x 5 copies x 104,114,280 B = 2.42 GiB
    assert any("5-fold run of deeplabv3_r34 2.42 GiB" in line for line in lines)


def test_gpu_present_but_cuda_unusable():
    facts = Facts(device_files=("/dev/nvidia0",), smi_found=True,
                  smi="570.86.15, NVIDIA A10G, 23028 MiB, 8.6", torch_cuda="13.0",
                  torch_version="2.14.1+cu130")
    lines = report(Machine(**{**GOOD, "gpu": facts}))
    assert "NVIDIA driver: 570.86.15 (torch's CUDA 13.0 needs >= 580)" in lines
    assert any(line.startswith("GPU 0: NVIDIA A10G, 23028 MiB, compute 8.6") for line in lines)
    (problem,) = problems(gpu=facts)
    assert ">= 580" in problem and "whl/cu128" in problem and "--device cpu" in problem


def test_usable_gpus_and_bf16():
    facts = Facts(device_files=("/dev/nvidia0", "/dev/nvidia1"), smi_found=True,
                  smi="580.65.06, Tesla T4, 15360 MiB, 7.5\n", cuda_available=True,
                  torch_cuda="13.0", torch_version="2.14.1")
    gpus = [{"name": "Tesla T4", "memory": 15 * GIB, "capability": (7, 5)},
            {"name": "NVIDIA A100", "memory": 80 * GIB, "capability": (8, 0)}]
    lines = report(Machine(**{**GOOD, "gpu": facts, "cuda_gpus": gpus}))
    assert "GPU 0: Tesla T4, 15.00 GiB, compute 7.5, bf16 no (fp16 autocast)" in lines
    assert "GPU 1: NVIDIA A100, 80.00 GiB, compute 8.0, bf16 yes" in lines
    assert problems(gpu=facts, cuda_gpus=gpus) == []


def test_small_shm_and_memory():
    said = problems(shm_free=64 * 2**20)  # Docker's default
    assert len(said) == 2
    assert "--shm-size" in said[0] and "--workers 0" in said[0]
    assert "--cache ram needs 4.79 GiB" in said[1] and "64.0 MiB" in said[1]
    (only,) = problems(shm_free=3 * GIB)  # loaders fine, the ram cache not
    assert "--cache disk" in only
    assert "no /dev/shm" in problems(shm_free=None)[0]


def test_dataset_found_sizes_the_caches():
    lines = report(Machine(**{**GOOD, "images": (400, 100)}))
    # 400 x 409,600 B = 156.25 MiB, rounded to 156.2
    assert any("--cache ram needs 156.2 MiB (400 x 409,600 B)" in line for line in lines)
    assert "dataset: input/x: 400 train and 100 test images" in lines


def test_disk_too_small():
    (said,) = problems(disk_free=1 * GIB)
    assert "5-fold run needs 2.42 GiB" in said
    (said,) = problems(disk_free=5 * GIB)  # the run fits, not with --cache disk's 6.89 GiB
    assert "not with --cache disk" in said


def test_kaggle():
    (said,) = problems(kaggle_credentials=None)
    assert "no Kaggle credentials" in said and "KAGGLE_USERNAME" in said
    (said,) = problems(kaggle_cli=None)
    assert "pip install kaggle" in said


def test_packages():
    said = problems(packages={"torch": ("==2.14.1", "2.13.0+cpu"), "timm": ("==1.0.31", None),
                              "numpy": (">=2.0,<2.5", "2.5.1")})
    assert len(said) == 3
    assert "torch 2.13.0+cpu is installed, requirements.txt wants torch==2.14.1" in said[0]
    assert "timm is not installed" in said[1] and "numpy 2.5.1" in said[2]


def test_weights_offline():
    (said,) = problems(weights={"deeplabv3_r101": (False, "/t")}, offline="HF_HUB_OFFLINE=1")
    assert "deeplabv3_r101" in said and "--encoder-weights" in said
    assert problems(weights={"deeplabv3_r101": (False, "/t")}) == []


def test_constants_are_the_package_s():
    from competition.data.cache import PLANE
    from competition.model.config import build_config
    from competition.model.networks import from_config

    assert doctor.PLANE == PLANE
    state = from_config(build_config("deeplabv3_r34"), "none").state_dict()
    assert doctor.STATE_BYTES == sum(v.numel() * v.element_size() for v in state.values())


def test_command_exits_0(tmp_path, capsys, monkeypatch):
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "k"))
    (tmp_path / "d" / "train_images").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "d" / "train_images" / f"{i}.jpg").write_bytes(b"")
    assert main(["doctor", "--data", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert f"dataset: {tmp_path / 'd'}: 3 train and 0 test images" in out
    assert "problem: no Kaggle credentials" in out and out.strip().endswith("problem(s)")
