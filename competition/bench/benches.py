"""`python -m competition bench <what>`: timings measured side by side in one run.

rle:   our numba encode/decode against the numpy kernels found in most Kaggle notebooks,
       on the synthetic generator's masks, best of several interleaved rounds; --real
       adds the same table for the masks of a real train.csv.
score: offline scoring of a full-size test set (5,506 images x 4 classes) from CSV files.
train: training images per second of a preset, steady state, on the same in-memory batches:
       the pipeline's step (AMP, channels_last, no per-step host sync; --compile: compiled
       too) against a plain fp32 loop of the same model (--seeds adds the seeds' torchvision
       DeepLabV3-ResNet101 OS8, then the base of the ratios); and the loader's own
       steady-state rate without and with a warm image cache (--loader: that alone).
predict: inference images per second (one model, from a warm cache, compiled; the fold
       ensemble with flip TTA) and the time projected for the 5,506 test images.
postprocess: our post-processing and encoding of thresholded masks against the notebook way.
"""
from __future__ import annotations

from competition.bench import postprocess
from competition.bench.predict import bench_predict
from competition.bench.rle import bench_rle
from competition.bench.score import bench_score
from competition.bench.train import bench_train


BENCHES = {"rle": bench_rle, "score": bench_score, "train": bench_train,
           "predict": bench_predict, "postprocess": postprocess.run}
