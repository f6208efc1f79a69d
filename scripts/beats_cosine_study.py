"""What beats cosine? The CPU study of docs/beats_cosine.md, in one command.

    python scripts/beats_cosine_study.py                   # the study: 8 arms, LR sweeps, 3 seeds
    python scripts/beats_cosine_study.py --arms wsd linear_to_zero     # cosine against these two only
    python scripts/beats_cosine_study.py --runs outputs/beats_cosine_cut --report outputs/beats_cosine_cut/report \\
        --seeds 1 2 --grid-points 2 --extend 0 --extra +debug=tiny trainer.max_steps=30   # a check of the pipeline

Trains every run not finished yet (two at a time, one thread each; minigpt/studies/beats_cosine.py
says which and why): each arm's LR sweep on the first seed, then every seed at the chosen LR, then
the equal-wall-clock runs of the arms whose step is dearer than the baseline's. Then it writes
report.json, report.md and three figures (curves.png, lr_sweep.png, wall_clock.png). Run it again
after a kill: the finished runs stay, the unfinished one starts again. --report-only writes the
report from the runs there are, training nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

from minigpt.errors import UserError  # noqa: E402
from minigpt.launch.compose import compose  # noqa: E402
from minigpt.studies import beats_cosine as study  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="outputs/beats_cosine", help="where the runs go")
    parser.add_argument("--report", default="docs/images/beats_cosine", help="where the report and figures go")
    parser.add_argument("--arms", nargs="+", default=None, metavar="ARM",
                        help=f"the arms (default: all; cosine always): {', '.join(a.name for a in study.ARMS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(study.SEEDS), help="seeds; the first runs the LR sweep")
    parser.add_argument("--grid-points", type=int, default=study.GRID_POINTS,
                        help="LR points each sweep starts with (half decades around the optimizer's default)")
    parser.add_argument("--extend", type=int, default=study.EXTEND,
                        help="more LR points allowed per side when the best sits at an edge")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each on one thread)")
    parser.add_argument("--extra", nargs="*", default=[], help="train.py overrides added to every run (e.g. +debug=tiny)")
    parser.add_argument("--report-only", action="store_true", help="train nothing; report the runs there are")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    try:
        if args.grid_points < 1 or args.extend < 0 or args.jobs < 1 or not args.seeds:
            raise UserError("--grid-points and --jobs must be at least 1, --extend at least 0, and --seeds non-empty")
        s = study.Study(Path(args.runs), study.arm_specs(args.arms), tuple(args.extra), tuple(args.seeds),
                        args.grid_points, args.extend)
        for spec in s.specs:  # every arm's overrides composed and checked before anything runs
            compose(list(study.make_run(spec, spec.centre_lr, s.seeds[0], s.extra).overrides))
        start = time.perf_counter()
        if not args.report_only:
            trained = s.run(args.jobs)
            print(f"trained {len(trained)} runs in {time.perf_counter() - start:.0f} s")
        report = study.build_report(s)
        paths = study.write_report(report, Path(args.report))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for row in report.data["arms"] + report.data["equal_time"]["arms"]:
        d = row["minus_baseline"]
        verdict = "baseline" if row["name"] == study.BASELINE else \
            (f"{d['mean']:+.4f} vs cosine, {d['verdict']}" if d and d["mean"] is not None else "–")
        mean = f"{row['mean']:.4f}" if row["mean"] is not None else "–"
        print(f"{row['name']:<26} lr {study.lr_text(row['lr']):<8} {mean} over {row['n']} seeds: {verdict}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
