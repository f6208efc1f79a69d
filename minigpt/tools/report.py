"""Compare the jobs of a sweep, or a few single runs: the arms over their seeds (mean, sd, the
difference to a baseline with its 95% interval and verdict, a ranking that shows ties), a table
of every job, loss and LR plots per arm and, for an LR x warmup grid, the warmup-divergence
study's figures and LR-sensitivity tables.

examples:
    minigpt report multirun/2025-01-01_12-00-00
    minigpt report multirun/<date> --baseline scheduler=cosine_warmup
    minigpt report outputs/run-a outputs/run-b -o compare-ab
    minigpt report multirun/warmup_divergence_cpu/<date> -o docs/images/warmup_divergence_cpu

Writes report.md, loss.png and lr.png into -o/--out (default: <sweep dir>/report, or report/ beside
several folders); with --fit FIT.json
also predicted.png (each job's measured curve against the curve the fitted loss law predicts) and
a table of predicted and measured final losses; when the sweep
varies both the peak LR and the warmup (or with --warmup-study) also study_lr.png (final loss against peak LR) and
study_early.png (the first steps at one high LR). Failed, diverged and unfinished jobs get a
row like every other job.
"""

import sys

from minigpt.errors import UserError
from minigpt.studies.loss_law import load_fit
from minigpt.studies.sweep.report import write_report
from minigpt.tools import parser


def main(argv=None, prog=None) -> int:
    ap = parser(__doc__, prog)
    ap.add_argument("sweep_dir", nargs="+", help="the folder `python train.py -m ...` wrote (its job folders "
                    "inside), or several folders: sweeps or single runs, compared as one set of jobs")
    ap.add_argument("--baseline", help="the arm every other is compared with, by its overrides (e.g. "
                    "scheduler=cosine_warmup; a bare value matches any key's); default: the lowest mean")
    ap.add_argument("--warmup-study", action="store_true", help="add the warmup-divergence study's sections "
                    "even when the jobs vary the warmup at one peak LR (by default they come only when both vary)")
    ap.add_argument("-o", "--out", help="folder for report.md and the figures (default: <sweep_dir>/report)")
    ap.add_argument("--early-steps", type=int, help="the early window, in steps: the early peak loss is the highest "
                    "training loss in it, the early-curves figure shows twice as many steps (default: the "
                    "longest warmup of the sweep)")
    ap.add_argument("--fit", help="a loss-law fit (minigpt predict fit): draw each job's measured "
                    "curve against the curve the law predicts from its LRs, with a table of final losses")
    ap.add_argument("--lr", type=float, help="peak LR of the early-curves figure (default: the highest LR at "
                    "which the longest warmup trained on every seed)")
    args = ap.parse_args(argv)
    if args.early_steps is not None and args.early_steps < 1:
        print(f"error: --early-steps must be >= 1, got {args.early_steps}", file=sys.stderr)
        return 2
    try:
        fit = load_fit(args.fit)[0] if args.fit else None
        paths = write_report(args.sweep_dir, args.out, early_steps=args.early_steps, high_lr=args.lr, fit=fit,
                             baseline=args.baseline, warmup_study=args.warmup_study)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
