"""Severstal: Steel Defect Detection, from train.csv to a scored CV and a submission.

The package is layered (docs/architecture.md): errors, files, progress < data < model <
train | infer < kaggle, bench < cli. `python -m competition <stage>` is its interface.
"""
import sys

__version__ = "0.1.0"

# The flat modules of versions before the layers -> where their code lives now. Importing an
# old name fails with a line saying where to look, instead of a bare "No module named".
# (train, data, model and infer are packages now; their old names cannot say it.)
MOVED = {
    "rle": "data.rle", "labels": "data.labels", "images": "data.images",
    "folds": "data.folds (the fold split too)", "synth": "data.synth",
    "fidelity": "data.fidelity", "submission": "data.submission", "metric": "data.metric",
    "cache": "data.cache", "postprocess": "data.postprocess", "config": "model.config",
    "experiments": "model.experiments", "checkpoint": "model.checkpoint",
    "losses": "train.losses", "schedules": "train.schedules", "tracking": "train.tracking",
    "curves": "train.curves", "runs": "train.runs", "keep": "train.keep",
    "average": "train.average", "gates": "infer.gates", "search": "infer.search",
    "report": "infer.report (figures: data.figures)", "oof": "infer.oof",
    "predict": "infer.predict", "pseudo": "infer.pseudo (mixing into training: "
    "train.pseudo_mix)", "kernel": "kaggle.bundle", "kernel_script": "kaggle.kernel_script",
    "bench_postprocess": "bench.postprocess",
}


class _MovedFinder:
    """Asked last (the end of sys.meta_path), so only for a name no file of the package has."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        old = name.removeprefix(__name__ + ".")
        if old in MOVED and old != name:
            raise ModuleNotFoundError(f"{name} moved to {__name__}.{MOVED[old]} "
                                      "(docs/architecture.md)", name=name)
        return None


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedFinder())
