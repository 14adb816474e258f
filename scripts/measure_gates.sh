#!/usr/bin/env bash
# The issue-13 measurements on the demo's models (run `bash run.sh demo` first): OOF CV and
# test Dice of DeepLabV3 (with its image-level head), Unet, and both averaged, each with no
# gate, the aux head's gates, the classifier's gates, and the search's free choice.
# Writes submissions/measure/<models>/<gates>/ and prints one table row per combination.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export NO_ALBUMENTATIONS_UPDATE=1
syn=input/synthetic m=submissions/measure
declare -A RUNS=([deeplab]=folds/demo [unet]=folds/demo-unet [ensemble]=folds/demo,folds/demo-unet)
declare -A GLOBS=([deeplab]='folds/demo/fold*/best.pt' [unet]='folds/demo-unet/fold*/best.pt'
                  [ensemble]='folds/demo/fold*/best.pt,folds/demo-unet/fold*/best.pt')
declare -A GATES=([none]="--gates none" [aux]="--gates gate,scale --gate-sources aux"
                  [cls]="--gates gate,scale --gate-sources cls" [maxprob]="--gates maxprob"
                  [all]="")
rows=()
for models in deeplab unet ensemble; do
  $PY -m competition oof --data $syn --runs "${RUNS[$models]}" --folds-csv folds/demo/folds.csv \
    --classifier-runs folds/demo-cls --folds 0 --tta none,hflip --out $m/$models \
    --skip-oof-csv > /dev/null
  for g in none aux cls maxprob all; do
    out=$m/$models/$g
    if [ "$models" = unet ] && [ "$g" = aux ]; then continue; fi  # the Unet has no head
    $PY -m competition search --oof-dir $m/$models/oof --out $out ${GATES[$g]} > /dev/null
    $PY -m competition predict --data $syn --checkpoints "${GLOBS[$models]}" \
      --classifiers 'folds/demo-cls/fold*/best.pt' --postprocess $out/postprocess.json \
      --out $out/submission.csv > /dev/null
    test_dice=$($PY -m competition score --truth $syn/test_truth.csv \
      --submission $out/submission.csv --json | tail -1 | $PY -c 'import json,sys; print(f"{json.load(sys.stdin)[\"mean_dice\"]:.5f}")')
    chosen=$($PY -c "import json; r=json.load(open('$out/postprocess.json')); print(f\"{r['oof_mean_dice']:.5f} |\", ' / '.join((lambda g: 'none' if g['kind']=='none' else f\"{g['kind']} {g['source'] or ''} {g['value']:g}\".replace('  ',' '))(v['gate']) for v in r['classes'].values()))")
    rows+=("| $models | $g | ${chosen%% |*} | $test_dice | ${chosen#* | } |")
  done
done
echo "| models | gates searched | OOF CV | test Dice | chosen gate per class (1 / 2 / 3 / 4) |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
