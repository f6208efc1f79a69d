"""Benchmark loss prediction on a long schedule: what `minigpt predict` spends on a 10^5-step run.

    python scripts/bench_predict.py                       # 10^5 steps, 5 repeats
    python scripts/bench_predict.py --steps 200000 --out docs/images/loss_predict_speed.json

For a cosine_warmup and a wsd config of --steps updates (composed as train.py composes them), it
times, in one process after a warm-up round:
- `planned_lrs`: the LR of every update (the plan is built and its curve checked, then walked once);
- the multi-power law's prediction at 200 points (what `predict` draws), alone and with its band.
It reports the median wall and CPU seconds of each (CPU time: `time.process_time`, which a loaded
machine inflates less than wall time) and the machine's load average at the start. The law's
parameters are those of a fit on law-made curves (tests/test_loss_law.py's), with a covariance
so that the band is computed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

import numpy as np  # noqa: E402

from minigpt.launch.compose import compose  # noqa: E402
from minigpt.studies import loss_law  # noqa: E402
from minigpt.studies import loss_prediction as lp  # noqa: E402

PARAMS = {"L0": 3.0, "A": 1.5, "alpha": 0.4, "B": 70.0, "C": 2.0, "beta": 0.6, "gamma": 0.6}


def timed(fn, repeats: int) -> tuple[dict, object]:
    fn()  # warm-up: imports, first allocations
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return {"wall_s": round(statistics.median(walls), 4), "cpu_s": round(statistics.median(cpus), 4)}, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100_000, help="updates of the predicted run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    fit = loss_law.Fit("multi_power", dict(PARAMS), {}, 0.0, 0.0, 0, 0,
                       covariance=(np.eye(len(PARAMS)) * 1e-4).tolist())
    results = {"what": f"planned_lrs and the multi-power prediction (200 points, alone and with its band) of a "
                       f"{args.steps:,}-step run; medians of {args.repeats} repeats after a warm-up",
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"load average {os.getloadavg()[0]:.2f} at the start",
               "schedules": {}}
    for scheduler in ("cosine_warmup", "wsd"):
        config = compose([f"scheduler={scheduler}", f"trainer.max_steps={args.steps}"])
        plan_t, lrs = timed(lambda: lp.planned_lrs(config), args.repeats)
        steps = np.unique(np.linspace(1, args.steps, 200).astype(int))
        predict_t, _ = timed(lambda: fit.predict(lrs, steps), args.repeats)
        band_t, _ = timed(lambda: fit.predict_with_band(lrs, steps), args.repeats)
        results["schedules"][scheduler] = {"planned_lrs": plan_t, "predict": predict_t, "predict_with_band": band_t,
                                           "total_cpu_s": round(plan_t["cpu_s"] + band_t["cpu_s"], 4)}
        print(f"{scheduler}: planned_lrs {plan_t['cpu_s']:.3f} s CPU, predict {predict_t['cpu_s']:.3f} s, "
              f"with its band {band_t['cpu_s']:.3f} s")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
