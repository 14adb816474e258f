#!/usr/bin/env bash
# Thin front door over `python -m competition <stage>`; see README.md and docs/ for every stage.
#   bash run.sh setup | demo | test [pytest args] | folds | fold0..foldN [options] | oof | predict
#   | kernel --owner USER [--check DATA] [--push] | score ... | bench rle|score|train|predict
#   (DATA=dataset folder, NPROC=GPUs for torchrun)
# Any other stage is passed through: `bash run.sh synth --out input/x` = python -m competition synth ...
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY="$VENV/bin/python"
DATA=${DATA:-input/severstal-steel-defect-detection}
export NO_ALBUMENTATIONS_UPDATE=1  # albumentations would otherwise call the network at import

setup() {
  # (Re)install only when requirements.txt changed since the last successful setup.
  local want stamp="$VENV/.requirements.sha256"
  want=$(sha256sum requirements.txt | cut -d' ' -f1)
  if [ -x "$PY" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return 0; fi
  echo "setup: installing requirements.txt into $VENV (first time: a few minutes, ~6 GB)"
  "${PYTHON:-python3}" -m venv "$VENV"
  "$PY" -m pip install --disable-pip-version-check -q -r requirements.txt
  "$PY" -c "import torch, torchvision, timm, segmentation_models_pytorch, albumentations, numba, iterstrat"
  echo "$want" > "$stamp"
  echo "setup: done ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
}

need_data() {
  if [ ! -f "$DATA/train.csv" ]; then
    echo "error: no Kaggle data in $DATA: run 'kaggle competitions download -c severstal-steel-defect-detection' and unzip it there, set DATA=..., or try everything now on synthetic data with 'bash run.sh demo'" >&2
    exit 2
  fi
}

stage=${1:-}
[ $# -gt 0 ] && shift
case "$stage" in
  setup)
    setup ;;
  test)
    setup
    "$PY" -m pytest -q tests "$@" ;;
  demo)
    # Everything on a small synthetic dataset, in folders of its own (a real run's
    # folds/ and submissions/ are left alone).
    setup
    syn=input/synthetic
    "$PY" -m competition synth --out "$syn" --train 400 --test 100 --seed 0
    "$PY" -m competition folds --data "$syn" --n-folds 5 --seed 42 --out folds/demo/folds.csv
    "$PY" -m competition baseline --sample "$syn/sample_submission.csv" --out submissions/demo/empty.csv
    "$PY" -m competition validate --submission submissions/demo/empty.csv --sample "$syn/sample_submission.csv"
    "$PY" -m competition score --truth "$syn/test_truth.csv" --submission submissions/demo/empty.csv
    "$PY" -m competition train --data "$syn" --fold 0 --config demo_cpu \
      --folds folds/demo/folds.csv --out folds/demo/fold0 --overwrite
    # one trained fold here (a CPU budget); a real run has five: bash run.sh fold0..fold4
    # (several runs and classifier runs ensemble: docs/gates-and-ensembles.md)
    "$PY" -m competition oof --data "$syn" --runs folds/demo --folds 0 --tta none,hflip \
      --out submissions/demo
    "$PY" -m competition predict --data "$syn" --checkpoints 'folds/demo/fold*/best.pt' \
      --postprocess submissions/demo/postprocess.json --out submissions/demo/submission.csv
    "$PY" -m competition validate --submission submissions/demo/submission.csv \
      --sample "$syn/sample_submission.csv"
    "$PY" -m competition score --truth "$syn/test_truth.csv" --submission submissions/demo/submission.csv
    # the Kaggle bundle, and its kernel run here as on Kaggle: offline, on a simulated /kaggle/input
    "$PY" -m competition kernel --owner demo-user --checkpoints 'folds/demo/fold*/best.pt' \
      --postprocess submissions/demo/postprocess.json --out kaggle/demo --check "$syn"
    cmp kaggle/demo/rehearsal/working/submission.csv submissions/demo/submission.csv
    echo "demo: the offline kernel's submission.csv is identical to submissions/demo/submission.csv"
    echo "demo: done: folds/demo/fold0 (model), submissions/demo/ (oof/, postprocess.json," \
      "cv_report/, oof.csv, submission.csv), kaggle/demo/ (weights/, code/, kernel/)" ;;
  folds)
    # bash run.sh folds [--n-folds N ...] on $DATA, or --labels CSV (image-level labels)
    setup
    if [[ " $* " == *" --labels"* ]]; then "$PY" -m competition folds "$@"
    else need_data; "$PY" -m competition folds --data "$DATA" "$@"; fi ;;
  fold[0-9]*)
    # bash run.sh fold<K> [train options]; NPROC=<GPUs> trains with torchrun (DDP).
    k=${stage#fold}
    [[ $k =~ ^[0-9]+$ ]] || { echo "error: $stage: expected fold<number>, e.g. fold0" >&2; exit 2; }
    setup; need_data
    [ -f folds/folds.csv ] || "$PY" -m competition folds --data "$DATA" --out folds/folds.csv
    if [ "${NPROC:-1}" -gt 1 ]; then
      "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
        -m competition train --data "$DATA" --fold "$k" "$@"
    else
      "$PY" -m competition train --data "$DATA" --fold "$k" "$@"
    fi ;;
  oof)
    # OOF statistics of folds/fold*/best.pt, the post-processing search
    # (submissions/postprocess.json, submissions/cv_report/), the OOF submission and its score
    setup; need_data
    "$PY" -m competition oof --data "$DATA" "$@" ;;
  predict)
    # fold ensemble + TTA + post-processing -> submissions/submission.csv (validated)
    setup
    "$PY" -m competition predict --data "$DATA" "$@" ;;
  kernel)
    # Kaggle bundle (kaggle/weights, kaggle/code, kaggle/kernel) from folds/fold*/best.pt and
    # submissions/postprocess.json; --check DATA rehearses the kernel offline; --push uploads
    setup
    "$PY" -m competition kernel "$@" ;;
  ""|-h|--help|help)
    sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
    echo "stages: setup demo test folds fold<K> oof predict kernel train search score validate check synth bench (python -m competition --help)" ;;
  *)
    setup
    "$PY" -m competition "$stage" "$@" ;;
esac
