"""The scale study of docs/loss_prediction.md, in one command: where does each loss law hold?

    python scripts/loss_scale_study.py                      # the study: 600, 2,000 and 5,000 steps
    python scripts/loss_scale_study.py --corpus torch --runs outputs/loss_scale_torch \
        --report docs/images/loss_scale_torch              # the same on a corpus no run repeats
    python scripts/loss_scale_study.py --lengths 40 80 --runs outputs/loss_scale_cut \\
        --report outputs/loss_scale_cut/report --extra +debug=tiny   # a cut-down check of the pipeline

Trains every run not finished yet (two at a time, one thread each; minigpt/studies/loss_scale.py
lists them), stores the curves they give (LRs and val losses: the report's `curves.json`), fits
both laws by both procedures on each set of fitted runs at each length, predicts the unseen runs,
and writes `report.json` and `error_vs_length.png`. With --check-optimized (auto: only where the
fit is not flagged) it runs the WSD schedule `optimize` picks from the multi-power fit that
predicts best (the smallest largest error, at whatever length and on whichever fitted runs) on
three seeds and reports its paired difference to cosine with a 95% interval.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

from minigpt.errors import UserError  # noqa: E402
from minigpt.launch.compose import compose  # noqa: E402
from minigpt.studies import loss_law  # noqa: E402
from minigpt.studies import loss_prediction as lp  # noqa: E402
from minigpt.studies import loss_scale as study  # noqa: E402


def where_it_predicts_best(fits: list[dict]) -> dict:
    """The multi-power fit by the default procedure with the smallest largest error on the unseen
    same-length runs (the longer length on a tie): where the study checks what `optimize` picks."""
    rows = [r for r in fits if r["law"] == "multi_power" and r["procedure"] == loss_law.DEFAULT_PROCEDURE]
    return min(rows, key=lambda r: (r["max_abs_error"], -r["length"]))


def optimized_runs(args, row: dict, extra: list[str]) -> tuple[list[study.Run], dict]:
    """The WSD schedule optimize picks from the fit of the report's `row`, as runs at that row's length
    with every seed; and what was decided (or why it was skipped)."""
    length, fitted = row["length"], loss_law.Fit.from_dict(row["fit"])
    base = next(r.overrides for r in study.plan_runs([length], study.SEEDS[:1], extra, args.corpus)
                if r.schedule == "cosine")
    search = lp.search_wsd(fitted, compose, base)
    best = lp.planned_lrs(compose(lp.merge_overrides(base, search.overrides)))
    warnings = lp.warnings_for(fitted, [("the optimized schedule", best)])
    decision = {"length": length, "fit_set": row["fit_set"], "procedure": fitted.procedure,
                "overrides": search.overrides, "predicted_final_loss": search.predicted,
                "grid_edges": search.edges, "warnings": warnings}
    if warnings and args.check_optimized != "always":
        decision["skipped"] = "the fit or the schedule is flagged (warnings); --check-optimized always runs it anyway"
        return [], decision
    runs = []
    for seed in study.SEEDS:
        overrides = lp.merge_overrides(base, [*search.overrides, f"seed={seed}"])
        runs.append(study.Run("optimized" if seed == study.SEEDS[0] else f"optimized_s{seed}", "optimized", length,
                              seed, overrides))
    return runs, decision


def load_known(path: str | None, runs: list[study.Run]) -> dict:
    """The curves of this study's runs that an earlier report's curves.json holds ({} without one)."""
    if path is None:
        return {}
    try:
        earlier = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--reuse-curves {path}: cannot read it as a report's curves.json ({e}); "
                        "give the curves.json a loss-scale report wrote") from None
    wanted = {r.key for r in runs}
    return {key: curve for key, curve in earlier.items() if key in wanted} if isinstance(earlier, dict) else {}


def read_report(path: Path) -> dict:
    """An earlier report.json as a dict ({} if there is none, or it is not one this script wrote)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def earlier_seconds(report_dir: Path, runs_root: Path, reuse_curves: str | None = None,
                    reused=()) -> dict[str, float]:
    """The run times earlier reports recorded for the runs this one does not train again: runs still
    finished in `runs_root`, from the report in `report_dir` if it names that folder, and the runs
    whose curves come from --reuse-curves (`reused`), from the report beside that curves.json. A run
    trained again gets its new time."""
    kept = {}
    here = read_report(report_dir / "report.json")
    if here.get("runs") == lp.relative_path(runs_root):
        kept.update({key: s for key, s in (here.get("run_seconds") or {}).items() if study.finished(runs_root / key)})
    if reuse_curves:
        beside = read_report(Path(reuse_curves).parent / "report.json")
        kept.update({key: s for key, s in (beside.get("run_seconds") or {}).items() if key in reused})
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="outputs/loss_scale", help="where the runs go")
    parser.add_argument("--report", default="docs/images/loss_scale", help="where the report, curves and figure go")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(study.LENGTHS), help="run lengths (steps)")
    parser.add_argument("--jobs", type=int, default=2, help="runs (and then fits) at a time, each on one thread")
    parser.add_argument("--corpus", choices=study.CORPORA, default="stdlib",
                        help="the text every run reads: the default stdlib corpus, or the installed torch package's "
                             "Python sources (4x larger: no run repeats a token)")
    parser.add_argument("--extra", nargs="*", default=[], help="train.py overrides added to every run (e.g. +debug=tiny)")
    parser.add_argument("--reuse-curves", metavar="CURVES_JSON",
                        help="take the runs an earlier report's curves.json holds from it instead of training them "
                             "(e.g. docs/images/loss_scale/curves.json, to add a length to the committed study)")
    parser.add_argument("--restarts", type=int, default=12, help="random starts of the bounded procedure")
    parser.add_argument("--check-optimized", choices=["auto", "always", "never"], default="auto",
                        help="run the optimized WSD schedule against cosine on 3 seeds (auto: unless the fit is flagged)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    try:
        runs_root, report_dir = Path(args.runs), Path(args.report)
        runs = study.plan_runs(args.lengths, study.SEEDS, args.extra, args.corpus)
        for r in runs:  # every run's overrides composed and checked before anything runs
            compose(r.overrides)
        known = load_known(args.reuse_curves, runs)
        kept = earlier_seconds(report_dir, runs_root, args.reuse_curves, known)
        seconds = {**kept, **study.train_runs(runs, runs_root, args.jobs, known=known)}
        curves = study.collect_curves(runs, runs_root, known=known)
        report = {"title": f"where each loss law holds ({', '.join(map(str, args.lengths))} steps, "
                           f"{args.corpus} corpus)",
                  "model": study.MODEL, "corpus": args.corpus, "lengths": args.lengths, "seeds": list(study.SEEDS),
                  "extra": args.extra,
                  "runs": lp.relative_path(runs_root),
                  "seed_spread": {str(n): study.seed_spread(curves, n) for n in args.lengths},
                  "run_seconds": seconds, "reused_curves": sorted(known)}
        start = time.perf_counter()
        report["fits"] = study.evaluate(curves, args.lengths, restarts=args.restarts, jobs=args.jobs)
        report["evaluate_seconds"] = time.perf_counter() - start
        if args.check_optimized != "never":
            extra_runs, report["optimized"] = optimized_runs(args, where_it_predicts_best(report["fits"]), args.extra)
            length = report["optimized"]["length"]
            if extra_runs:
                report["run_seconds"].update(study.train_runs(extra_runs, runs_root, args.jobs))
                finals = {r.seed: study.final_loss(lp.read_run(r.folder(runs_root))[0]) for r in extra_runs}
                report["optimized_check"] = study.check_optimized(curves, finals, length)
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "curves.json").write_text(json.dumps(curves) + "\n")
        (report_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        study.draw(report, report_dir / "error_vs_length.png")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in study.summary_lines(report):
        print(line)
    print(f"wrote {report_dir / 'report.json'}, {report_dir / 'curves.json'} and {report_dir / 'error_vs_length.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
