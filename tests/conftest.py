import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
FIXTURES = ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """A small synthetic dataset, made once per test session."""
    from competition.synth import make_dataset

    out = tmp_path_factory.mktemp("data") / "synthetic"
    make_dataset(out, n_train=60, n_test=12, seed=3)
    return out
