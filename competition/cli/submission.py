"""`baseline`, `validate` and `score`: submission files against a sample or the truth."""
from __future__ import annotations

import json

from competition.cli.options import Switch
from competition.errors import InputError


def cmd_baseline(args) -> None:
    from competition.data import submission
    from competition.data.labels import read_sample

    frame = submission.write(args.out, read_sample(args.sample), {})
    print(f"wrote {args.out}: all-empty submission, {len(frame)} rows")


def cmd_validate(args) -> None:
    from competition.data.submission import validate

    table = validate(args.submission, args.sample)
    filled = int((table.EncodedPixels != "").sum())
    print(f"{args.submission}: valid, {len(table)} rows, {filled} non-empty masks")


def check_truth(submission, truth, submission_path, truth_path) -> None:
    """A truth file that holds rows, none of them of the submission's images, is the truth of
    other images: every pair would be scored against an empty mask (an empty submission
    would score a perfect 1.0 that means nothing). Refused; a truth file without rows is the
    truth of images without defects, and is scored."""
    if len(truth) and not set(submission.ImageId) & set(truth.ImageId):
        raise InputError(f"{truth_path} holds none of the {submission.ImageId.nunique()} images "
                         f"of {submission_path}: it is not their truth (every pair would be "
                         "scored against an empty mask)")


def cmd_score(args) -> None:
    from competition.data.labels import read_table
    from competition.data.metric import score_tables

    submission, _, _ = read_table(args.submission)
    truth, _, _ = read_table(args.truth)
    check_truth(submission, truth, args.submission, args.truth)
    result = score_tables(submission, truth)
    print(f"{args.submission} against {args.truth}: {result['pairs']} (image, class) pairs")
    print(f"{'class':>6} {'dice':>8}")
    for c, v in result["per_class"].items():
        print(f"{c:>6} {v:8.5f}")
    print(f"{'mean':>6} {result['mean_dice']:8.5f}   (all-empty baseline "
          f"{result['all_empty_baseline']:.5f})")
    if args.json:
        print(json.dumps(result))


def add(sub) -> None:
    """The parsers of baseline, validate, score."""
    p = sub.add_parser("baseline", help="write the all-empty submission for a sample")
    p.add_argument("--sample", required=True, help="sample_submission.csv")
    p.add_argument("--out", default="submissions/empty.csv")
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("validate", help="check a submission against the sample submission")
    p.add_argument("--submission", required=True)
    p.add_argument("--sample", required=True)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("score", help="score a submission against a truth CSV (mean Dice)")
    p.add_argument("--truth", required=True, help="truth CSV, either layout")
    p.add_argument("--submission", required=True, help="submission CSV, either layout")
    p.add_argument("--json", action=Switch, help="end with one JSON line of the scores")
    p.set_defaults(func=cmd_score)
