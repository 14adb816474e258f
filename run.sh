#!/usr/bin/env bash
# Thin front door over `python -m competition <stage>`; see README.md for every stage.
#   bash run.sh setup | demo | test [pytest args] | folds | score ... | bench rle|score
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
    setup
    syn=input/synthetic
    "$PY" -m competition synth --out "$syn" --train 400 --test 100 --seed 0
    "$PY" -m competition folds --data "$syn" --n-folds 5 --seed 42 --out folds/folds.csv
    "$PY" -m competition baseline --sample "$syn/sample_submission.csv" --out submissions/empty.csv
    "$PY" -m competition validate --submission submissions/empty.csv --sample "$syn/sample_submission.csv"
    "$PY" -m competition score --truth "$syn/test_truth.csv" --submission submissions/empty.csv
    echo "demo: done. All-empty baseline above; training, OOF and prediction come next." ;;
  folds)
    setup; need_data
    "$PY" -m competition folds --data "$DATA" "$@" ;;
  ""|-h|--help|help)
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
    echo "stages: setup demo test folds score validate check synth bench (python -m competition --help)" ;;
  *)
    setup
    "$PY" -m competition "$stage" "$@" ;;
esac
