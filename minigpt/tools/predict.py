"""Predict a schedule's loss curve before running it, and search for a better schedule.

examples:
    minigpt predict fit RUN_DIR [RUN_DIR ...] --law multi_power [--procedure published] -o fit.json
    minigpt predict predict fit.json --scheduler wsd scheduler.decay_shape=linear \\
        --scheduler cosine_warmup trainer.max_steps=1200 -o predicted.png
    minigpt predict predict fit.json --run RUN_DIR ...     # against measured runs
    minigpt predict optimize fit.json --family wsd -o best.json

`fit` reads each run's metrics.jsonl (the LR of every update; val/loss at the evaluation steps,
or with --target train the smoothed train loss), fits the law and writes its parameters as JSON
and a figure of the fitted against the observed curves. `predict` takes any schedule with
train.py's overrides, starting from the first fitted run's own overrides (so the peak LR and run
length are the fitted runs' unless changed), and writes the predicted curves and final losses
(.json) and one figure. `optimize` searches the schedule with the lowest predicted final loss at
the same peak LR, run length and warmup and writes the train.py command that runs it.
The laws: minigpt/studies/loss_law.py; the rest: minigpt/studies/loss_prediction.py; docs/loss_prediction.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from minigpt.errors import UserError
from minigpt.launch.compose import compose
from minigpt.studies import loss_law
from minigpt.studies import loss_prediction as lp
from minigpt.tools import parser as tool_parser


def plan(overrides: list[str]):
    return lp.planned_lrs(compose(overrides))


def cmd_fit(args) -> int:
    law = loss_law.get_law(args.law)
    runs = [lp.read_run(Path(d), args.target, args.smoothing, args.every) for d in args.run_dirs]
    curves = [c for c, _ in runs]
    fitted = loss_law.fit(law.name, curves, procedure=args.procedure, restarts=args.restarts, seed=args.seed,
                          start=args.start)
    out = Path(args.output or f"fit_{law.name}.json")
    figure = Path(args.figure) if args.figure else out.with_suffix(".png")
    record = fitted.to_dict()
    ends = fitted.end_errors(curves)
    record.update({"end_errors": [{"label": label, "step": step, "error": error} for label, step, error in ends],
                   "target": args.target, "start": args.start, "paper": law.paper,
                   "run_dirs": [lp.relative_path(d) for d in args.run_dirs],
                   "overrides": lp.schedule_overrides(runs[0][1]),
                   "run_overrides": lp.comparable_overrides(Path(args.run_dirs[0]))})
    if args.keep_curves:
        record["curves"] = [loss_law.curve_to_dict(c) for c in curves]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    lp.plot_curves(figure, f"{law.name} law fitted to {len(curves)} runs: RMSE {fitted.rmse:.4f} nats on "
                   f"{fitted.n_points} points", fitted, [(c.label, c.lrs, c) for c in curves], note=args.note)
    print(lp.describe_fit(fitted))
    if fitted.warning():
        print(f"warning: {fitted.warning()}")
    print("at the end of each fitted run, predicted minus measured: "
          + ", ".join(f"{label} {error:+.4f}" for label, _, error in ends)
          + " (a miss here bounds how well any unseen end is predicted)")
    print(f"RMSE {fitted.rmse:.4f} nats, largest error {fitted.max_error:.4f} on {fitted.n_points} points; "
          f"wrote {out} and {figure}")
    return 0


def cmd_predict(args) -> int:
    fitted, record = loss_law.load_fit(args.fit)
    if not args.scheduler and not args.run:
        raise UserError("nothing to predict: give --scheduler NAME [key=value ...] (repeatable) or --run RUN_DIR")
    base = lp.fit_overrides(record, args.fit)
    jobs = []  # every schedule is composed and checked before anything is written
    for name, *overrides in args.scheduler or []:
        if "=" in name:
            raise UserError(f"--scheduler takes a schedule name first, then key=value overrides; got '{name}'")
        jobs.append((" ".join([name, *overrides]), plan(lp.merge_overrides(base, [f"scheduler={name}", *overrides])), None))
    for run_dir in args.run or []:
        curve, _ = lp.read_run(Path(run_dir), record.get("target", "val"))
        jobs.append((Path(run_dir).name, curve.lrs, curve))
    out = Path(args.output)
    results = lp.plot_curves(out, f"predicted by the {fitted.law} law fitted to "
                             f"{', '.join(r['label'] for r in fitted.runs)}", fitted, jobs, args.points, note=args.note)
    data = out.with_suffix(".json")
    warnings = lp.warnings_for(fitted, [(label, lrs) for label, lrs, _ in jobs])
    data.write_text(json.dumps({"fit": lp.relative_path(args.fit), "law": fitted.law, "procedure": fitted.procedure,
                                "warnings": warnings, "predictions": results}, indent=2) + "\n")
    for line in warnings:
        print(f"warning: {line}")
    for r in results:
        line = f"{r['label']}: {r['steps']} steps, predicted final loss {r['final_loss']:.4f}"
        if "band" in r:
            line += f" +- {r['band']:.2g} (95%, from the fit's covariance)"
        if "measured_final_loss" in r:
            line += f", measured {r['measured_final_loss']:.4f} (error {r['final_loss'] - r['measured_final_loss']:+.4f})"
        print(line)
    print(f"wrote {out} and {data}")
    return 0


def cmd_optimize(args) -> int:
    fitted, record = loss_law.load_fit(args.fit)
    base = lp.merge_overrides(lp.fit_overrides(record, args.fit), args.overrides)
    reference = plan(base)  # bad overrides end here, before anything is searched or written
    edges = []
    if args.family == "wsd":
        search = lp.search_wsd(fitted, compose, base)
        overrides, predicted, candidates, edges = search.overrides, search.predicted, search.candidates, search.edges
    else:
        (overrides, predicted), candidates = lp.search_free(fitted, compose, base, args.knots), None
    best = plan(lp.merge_overrides(base, overrides))
    cosine = plan(lp.merge_overrides(base, ["scheduler=cosine_warmup"]))
    # the command carries the fitted run's evaluation settings, data, model and seed: its result compares
    run_base = lp.merge_overrides(record.get("run_overrides") or base, args.overrides)
    command = lp.train_command(lp.merge_overrides(run_base, overrides))
    warnings = lp.warnings_for(fitted, [("the optimized schedule", best)])
    band = fitted.band(best, [len(best)])
    result = {"law": fitted.law, "procedure": fitted.procedure, "fit": lp.relative_path(args.fit),
              "family": args.family, "overrides": overrides, "base_overrides": base, "predicted_final_loss": predicted,
              "predicted_band": None if band is None else float(band[0]),
              "cosine_predicted_final_loss": lp.final_loss(fitted, cosine), "steps": int(len(reference)),
              "peak_lr": float(reference.max()), "candidates": candidates, "grid_edges": edges, "warnings": warnings,
              "command": command if not warnings or args.print_command else None}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lp.plot_curves(out.with_suffix(".png"), f"the best {args.family} schedule against cosine_warmup, predicted by the "
                   f"{fitted.law} law", fitted, [("optimized", best, None), ("cosine_warmup", cosine, None)],
                   note=args.note)
    spread = "" if band is None else f" +- {band[0]:.2g} (95%)"
    print(f"best {args.family} schedule: predicted final loss {predicted:.4f}{spread} "
          f"(cosine_warmup: {result['cosine_predicted_final_loss']:.4f})")
    for edge in edges:
        print(f"note: the best schedule's {edge} is on an edge of the search grid: the optimum may lie beyond it")
    for line in warnings:
        print(f"warning: {line}")
    if result["command"]:
        print(f"run it with:\n  {command}")
    else:
        print("no command printed: the prediction is not to be trusted (above); --print-command prints it anyway")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = tool_parser(__doc__, prog)
    verbs = parser.add_subparsers(dest="verb", required=True)

    f = verbs.add_parser("fit", help="fit a law to measured runs")
    f.add_argument("run_dirs", nargs="+", help="run directories (each with metrics.jsonl)")
    f.add_argument("--law", default="multi_power", help=f"one of: {', '.join(loss_law.LAWS)}")
    f.add_argument("-o", "--out", "--output", dest="output", metavar="OUT", help="the fit's JSON (default fit_<law>.json)")
    f.add_argument("--figure", help="fitted vs observed curves (default: the JSON's name with .png)")
    f.add_argument("--target", choices=["val", "train"], default="val",
                   help="val/loss at the evaluation steps, or the smoothed train/loss")
    f.add_argument("--smoothing", type=float, default=0.9, help="EMA factor of the train loss (--target train)")
    f.add_argument("--every", type=int, default=10, help="a smoothed train-loss point every N steps (--target train)")
    f.add_argument("--start", type=int, help="fit the losses from this step on (default: the end of the warmup)")
    f.add_argument("--procedure", choices=loss_law.PROCEDURES, default=loss_law.DEFAULT_PROCEDURE,
                   help="published: the multi-power paper's regression start and AdamW refinement, L0 unbounded; "
                        "bounded: bounded least squares from --restarts random starts")
    f.add_argument("--restarts", type=int, default=12, help="random starting points of the fit (--procedure bounded)")
    f.add_argument("--keep-curves", action="store_true", help="store the fitted curves (LRs and losses) in the JSON")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--note", default="", help="a line for the figure's legend, e.g. the machine")
    f.set_defaults(handler=cmd_fit)

    p = verbs.add_parser("predict", help="predict the loss curves of schedules")
    p.add_argument("fit", help="a fit's JSON")
    p.add_argument("--scheduler", nargs="+", action="append", metavar="NAME [KEY=VALUE ...]",
                   help="a schedule and train.py overrides (repeat for several on one figure)")
    p.add_argument("--run", nargs="+", help="measured runs: predict their schedules and draw their losses")
    p.add_argument("--points", type=int, default=200, help="points of each predicted curve")
    p.add_argument("-o", "--out", "--output", dest="output", metavar="OUT", default="predicted.png",
                   help="the figure (the curves go to the same name .json)")
    p.add_argument("--note", default="", help="a line for the figure's legend, e.g. the machine")
    p.set_defaults(handler=cmd_predict)

    o = verbs.add_parser("optimize", help="search the schedule with the lowest predicted final loss")
    o.add_argument("fit", help="a fit's JSON")
    o.add_argument("overrides", nargs="*", help="train.py overrides of the run to plan (e.g. trainer.max_steps=1200)")
    o.add_argument("--family", choices=["wsd", "free"], default="wsd",
                   help="wsd: cooldown fraction, shape and floor; free: a monotone table of multipliers")
    o.add_argument("--knots", type=int, default=24, help="knots after the warmup (--family free)")
    o.add_argument("-o", "--out", "--output", dest="output", metavar="OUT", default="optimized.json",
                   help="the result (with the train.py command)")
    o.add_argument("--print-command", action="store_true",
                   help="print the train.py command even when the fit or the schedule is flagged as not trustworthy")
    o.add_argument("--note", default="", help="a line for the figure's legend, e.g. the machine")
    o.set_defaults(handler=cmd_optimize)

    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output folder that cannot be written, an input that cannot be read
        print(f"error: {e.filename or ''}: {e.strerror or e}; check the paths given (-o and the inputs)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
