"""Run under torchrun by tests/test_train.py: `python -m competition train ...` with
`evaluate` wrapped so that each rank writes the SHA-256 of every tensor of the model it is
about to validate (one file per rank and epoch, in $PROBE_DIR)."""
import hashlib
import os
import sys
from pathlib import Path

from competition.train import fit as train_lib  # fit calls its module's `evaluate`
from competition.cli import main

real = train_lib.evaluate
calls = {"n": 0}


def probed(model, *args, **kwargs):
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    calls["n"] += 1
    folder = Path(os.environ["PROBE_DIR"])
    (folder / f"rank{os.environ['RANK']}_eval{calls['n']}.txt").write_text(digest.hexdigest())
    return real(model, *args, **kwargs)


train_lib.evaluate = probed
sys.exit(main(sys.argv[1:]))
