#!/usr/bin/env bash
# Thin front door over `python -m competition <stage>`; see README.md and docs/ for every stage.
#   bash run.sh setup | doctor | demo | test [pytest args] | folds | fold0..foldN [options]
#   | oof | predict | kernel --owner USER --check DATA | kernel --push (the rehearsed bundle) | score ...
#   | bench ... | pipeline RECIPE [--gpus 0,1] [--ddp N]
#   (--data DIR or DATA=DIR: the dataset folder, for every stage; NPROC=GPUs for torchrun)
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

test_dice() {
  # the mean Dice of a submission against the synthetic test set's truth, 5 decimals
  "$PY" -m competition score --truth input/synthetic/test_truth.csv --submission "$1" --json |
    tail -1 | "$PY" -c 'import json, sys; print("%.5f" % json.load(sys.stdin)["mean_dice"])'
}

# A stage's `--data DIR` (or `--data=DIR`) sets DATA (default: $DATA, else the Kaggle
# download); the other options are left in ARGS, passed on after `--data "$DATA"`.
ARGS=()
take_data() {
  ARGS=()
  while [ $# -gt 0 ]; do
    case $1 in
      --data) [ $# -ge 2 ] || { echo "error: --data needs a dataset folder" >&2; exit 2; }
              DATA=$2; shift 2 ;;
      --data=*) DATA=${1#--data=}; shift ;;
      *) ARGS+=("$1"); shift ;;
    esac
  done
}

need_data() {
  if [ ! -f "$DATA/train.csv" ]; then
    echo "error: no Kaggle data in $DATA (no train.csv): run 'kaggle competitions download severstal-steel-defect-detection' and unzip it there, pass --data DIR (or set DATA=DIR), or try everything now on synthetic data with 'bash run.sh demo'" >&2
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
    # one process per core, at most 4 (each may train a small model), a test file each:
    # a file's module fixtures are made once (TEST_WORKERS=0 runs them in this process)
    "$PY" -m pytest -q -n "${TEST_WORKERS:-auto}" --maxprocesses 4 --dist loadfile tests \
      --durations=20 "$@" ;;
  demo|demo-pipeline)
    # Everything on a small synthetic dataset, through the same command a real submission
    # uses: `pipeline recipes/demo.yaml` (docs/pipeline.md), in folders of its own (a real
    # run's folds/ and submissions/ are left alone). A second `demo` skips what is done and
    # resumes an interrupted training; delete folds/demo* and submissions/demo to start over.
    setup
    syn=input/synthetic
    [ -f "$syn/train.csv" ] || "$PY" -m competition synth --out "$syn" --train 400 --test 100 --seed 0
    "$PY" -m competition doctor --data "$syn"
    # the floor every model must beat: an all-empty submission, validated and scored
    "$PY" -m competition baseline --sample "$syn/sample_submission.csv" --out submissions/demo/empty.csv
    "$PY" -m competition validate --submission submissions/demo/empty.csv --sample "$syn/sample_submission.csv"
    "$PY" -m competition score --truth "$syn/test_truth.csv" --submission submissions/demo/empty.csv
    # fold 0 of a DeepLabV3 with an image-level head and of a separate classifier (a CPU
    # budget; recipes/deeplabv3_r34.yaml trains all five folds), the OOF search with its gates,
    # predict, validate and score, and the Kaggle kernel rehearsed offline
    "$PY" -m competition pipeline recipes/demo.yaml "$@"
    cmp kaggle/demo/rehearsal/working/submission.csv submissions/demo/submission.csv
    echo "demo: the offline kernel's submission.csv is identical to submissions/demo/submission.csv"
    echo "demo: done: folds/demo/fold0, folds/demo-cls/fold0 (models), submissions/demo/ (oof/, postprocess.json," \
      "cv_report/, submission.csv), kaggle/demo/ (weights/, code/, kernel/)" ;;
  demo-ablation)
    # Issue 26's ablation (docs/accuracy.md): the demo's DeepLabV3 with one setting changed per
    # row, on the demo's data and budget; screened rows train seed 0, full rows seeds 0-2 and
    # go through OOF + search, predict and score. Finished runs are skipped; the table is
    # rewritten in submissions/demo-ablation/table.md. Pass --rows a,b for some rows only.
    setup
    syn=input/synthetic
    [ -f "$syn/train.csv" ] || "$PY" -m competition synth --out "$syn" --train 400 --test 100 --seed 0
    "$PY" -m competition ablation recipes/ablation/demo.yaml "$@" ;;
  demo-gates)
    # After `demo`: OOF CV and test Dice of the demo's DeepLabV3 (with its head), a Unet
    # (trained here) and both averaged, each with no gate, the head's gates, the classifier's gates and the
    # search's free choice (every kind); a table row each (docs/gates-and-ensembles.md).
    setup
    syn=input/synthetic m=submissions/demo-gates cls='folds/demo-cls/fold*/best.pt'
    [ -f folds/demo-cls/fold0/best.pt ] || { echo "error: run 'bash run.sh demo' first" >&2; exit 2; }
    # the second architecture of the ensemble (once; delete folds/demo-unet to retrain it)
    [ -f folds/demo-unet/fold0/best.pt ] ||
      "$PY" -m competition train --data "$syn" --fold 0 --preset demo_cpu --arch unet \
        --folds-csv folds/demo/folds.csv --out folds/demo-unet/fold0 --overwrite
    rows=() seen=()
    for models in deeplab unet ensemble; do
      case $models in
        deeplab) runs=folds/demo seg='folds/demo/fold*/best.pt' gate_sets="none aux cls all" ;;
        unet) runs=folds/demo-unet seg='folds/demo-unet/fold*/best.pt' gate_sets="none cls all" ;;
        ensemble) runs=folds/demo,folds/demo-unet
                  seg='folds/demo/fold*/best.pt,folds/demo-unet/fold*/best.pt' gate_sets="none aux cls all" ;;
      esac
      "$PY" -m competition oof --data "$syn" --runs "$runs" --folds-csv folds/demo/folds.csv \
        --classifier-runs folds/demo-cls --folds 0 --tta none,hflip --out "$m/$models" \
        --skip-oof-csv > /dev/null
      for g in $gate_sets; do
        case $g in
          none) opts=(--gates none) ;; aux) opts=(--gates gate,scale --gate-sources aux) ;;
          cls) opts=(--gates gate,scale --gate-sources cls) ;; all) opts=() ;;
        esac
        out=$m/$models/$g
        "$PY" -m competition search --oof-dir "$m/$models/oof" --out "$out" "${opts[@]}" > /dev/null
        # the chosen settings; a repeat of an earlier row's (same models) reuses its test score
        chosen=$("$PY" - "$out/postprocess.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
def gate(g):
    return "none" if g["kind"] == "none" else " ".join(
        str(x) for x in (g["kind"], g.get("source") or "", f"{g['value']:g}") if x)
key = json.dumps({c: {k: v[k] for k in ("threshold", "min_component", "min_area", "gate")}
                  for c, v in r["classes"].items()}, sort_keys=True)
print(f"{r['oof_mean_dice']:.5f}\t" + " / ".join(gate(v["gate"]) for v in r["classes"].values())
      + "\t" + key)
PYEOF
)
        IFS=$'\t' read -r cv gates key <<< "$chosen"
        test_dice=""
        for s in "${seen[@]}"; do [ "${s%%$'\t'*}" = "$models$key" ] && test_dice=${s##*$'\t'}; done
        if [ -z "$test_dice" ]; then
          "$PY" -m competition predict --data "$syn" --checkpoints "$seg" --classifiers "$cls" \
            --postprocess "$out/postprocess.json" --out "$out/submission.csv" > /dev/null
          test_dice=$(test_dice "$out/submission.csv")
          seen+=("$models$key"$'\t'"$test_dice")
        fi
        rows+=("| $models | $g | $cv | $test_dice | $gates |")
      done
    done
    echo "| models | gates searched | OOF CV | test Dice | chosen gate per class (1 / 2 / 3 / 4) |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}" ;;
  demo-levers)
    # After `demo`: the training levers on the demo's data, each model scored alone (TTA none):
    # BCE; its best.pt fine-tuned with Lovasz at lr 1e-4 (and with BCE, a control for the
    # extra epochs); its top-5 and last-5 epochs averaged; one round of pseudo-labels from the
    # demo's ensemble against the demo's DeepLabV3 (docs/losses-and-fine-tuning.md,
    # docs/weight-averaging.md, docs/pseudo-labels.md).
    setup
    syn=input/synthetic f=folds/demo-levers m=submissions/demo-levers
    [ -f folds/demo-cls/fold0/best.pt ] || { echo "error: run 'bash run.sh demo' first" >&2; exit 2; }
    common=(--data "$syn" --fold 0 --folds-csv folds/demo/folds.csv --overwrite --preset demo_cpu)
    tune=(--lr 1e-4 --encoder-lr 1e-4 --epochs 3 --warmup-epochs 0)
    "$PY" -m competition train "${common[@]}" --loss bce --keep-top 5 --keep-last 5 --out $f/bce/fold0
    "$PY" -m competition train "${common[@]}" "${tune[@]}" --loss lovasz \
      --init-from $f/bce/fold0/best.pt --out $f/bce-lovasz/fold0
    "$PY" -m competition train "${common[@]}" "${tune[@]}" --loss bce \
      --init-from $f/bce/fold0/best.pt --out $f/bce-more/fold0
    "$PY" -m competition average --run $f/bce/fold0 --top 5
    "$PY" -m competition average --run $f/bce/fold0 --last 5 --out $f/bce/fold0/averaged-last5.pt
    "$PY" -m competition pseudo --data "$syn" --classifiers 'folds/demo-cls/fold*/best.pt' \
      --checkpoints 'folds/demo/fold*/best.pt' --postprocess submissions/demo/postprocess.json --out input/synthetic-pseudo
    "$PY" -m competition train "${common[@]}" --cls-weight 0.2 --out $f/pseudo/fold0 \
      --pseudo input/synthetic-pseudo --pseudo-share 0.15
    mkdir -p "$m"
    printf '%s\n' "| model (fold 0, scored alone, TTA none) | validation Dice | OOF CV | test Dice |" \
      "|---|---|---|---|" > "$m/table.md"
    for row in "BCE (best.pt)|$f/bce|best.pt" "BCE, top-5 epochs averaged|$f/bce|averaged.pt" \
               "BCE, last-5 epochs averaged|$f/bce|averaged-last5.pt" \
               "BCE, then 3 epochs Lovasz at 1e-4|$f/bce-lovasz|best.pt" \
               "BCE, then 3 epochs BCE at 1e-4 (control)|$f/bce-more|best.pt" \
               "DeepLabV3 + head, the demo's (no pseudo-labels)|folds/demo|best.pt" \
               "DeepLabV3 + head, pseudo-labels share 0.15|$f/pseudo|best.pt"; do
      IFS='|' read -r name run ckpt <<< "$row"
      out=$m/$(basename "$run")-${ckpt%.pt}
      "$PY" -m competition oof --data "$syn" --runs "$run" --checkpoint-name "$ckpt" --folds 0 \
        --folds-csv folds/demo/folds.csv --tta none --out "$out" --skip-oof-csv > /dev/null
      "$PY" -m competition predict --data "$syn" --checkpoints "$run/fold0/$ckpt" \
        --postprocess "$out/postprocess.json" --out "$out/submission.csv" > /dev/null
      figures=$("$PY" - "$run/fold0/$ckpt" "$out/postprocess.json" <<'PYEOF'
import json, sys, torch
score = torch.load(sys.argv[1], map_location="cpu", weights_only=True)["score"]["mean_dice"]
print(f"{score:.4f} | {json.load(open(sys.argv[2]))['oof_mean_dice']:.5f}")
PYEOF
)
      test_dice=$(test_dice "$out/submission.csv")
      echo "| $name | $figures | $test_dice |" >> "$m/table.md"
    done
    cat "$m/table.md" ;;
  folds)
    # bash run.sh folds [--n-folds N ...] on $DATA, or --labels CSV (image-level labels)
    setup
    if [[ " $* " == *" --labels"* ]]; then "$PY" -m competition folds "$@"
    else take_data "$@"; set -- ${ARGS[@]+"${ARGS[@]}"}
         need_data; "$PY" -m competition folds --data "$DATA" "$@"; fi ;;
  fold[0-9]*)
    # bash run.sh fold<K> [train options]; NPROC=<GPUs> trains with torchrun (DDP).
    k=${stage#fold}
    [[ $k =~ ^[0-9]+$ ]] || { echo "error: $stage: expected fold<number>, e.g. fold0" >&2; exit 2; }
    take_data "$@"; set -- ${ARGS[@]+"${ARGS[@]}"}
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
    take_data "$@"; set -- ${ARGS[@]+"${ARGS[@]}"}
    setup; need_data
    "$PY" -m competition oof --data "$DATA" "$@" ;;
  predict)
    # fold ensemble + TTA + post-processing -> submissions/submission.csv (validated)
    take_data "$@"; set -- ${ARGS[@]+"${ARGS[@]}"}
    setup
    "$PY" -m competition predict --data "$DATA" "$@" ;;
  kernel)
    # Kaggle bundle (kaggle/weights, kaggle/code, kaggle/kernel) from folds/fold*/best.pt and
    # submissions/postprocess.json; --check DATA rehearses the kernel offline; --push uploads the
    # rehearsed bundle (without --owner: the bundle in --out as it is)
    setup
    "$PY" -m competition kernel "$@" ;;
  ""|-h|--help|help)
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    echo "stages: setup doctor demo demo-ablation demo-gates demo-levers test folds fold<K> oof predict kernel pipeline train search score validate check synth bench runs (python -m competition --help)" ;;
  *)
    setup
    "$PY" -m competition "$stage" "$@" ;;
esac
