"""Time a sweep of N small runs: one after another vs the ways of running them together.

    python scripts/bench_sweep.py                       # the GPU benchmark: 8 runs of gpu_tiny, 500 steps
    python scripts/bench_sweep.py --tiny                # a CPU-sized smoke version (seconds per run)
    python scripts/bench_sweep.py --modes sequential,stacked --runs 4 --out bench.json

The runs differ only in their peak LR. Modes:
  sequential  each run its own `python train.py` process, one after another (the baseline)
  sweep       `train.py -m`, Hydra's basic launcher: one process, the runs one after another
  stacked     `train.py -m hydra/launcher=stacked`: the runs trained together as one batched model
  parallel    `train.py -m hydra/launcher=parallel`: N processes at once (needs the sweeps extra)

For each mode it reports the wall-clock time of the whole command(s) (start-up included: that is
what a sweep costs), the speed-up over `sequential`, how far the final validation losses are from
the sequential runs' (the runs are the same runs, so this should be ~0), and checks that every run
finished with records, a checkpoint and a summary. Before timing, this process composes the
runs' config and prepares its token cache, so no mode pays for it. Everything goes to --out, the figures to <out>/bench.json,
rewritten after every mode: a sweep cut short keeps the modes it finished. A mode that fails is
recorded there ("failed") and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

from minigpt.errors import UserError  # noqa: E402

# The reference workload: 4 layers, 256 wide, context 256, batch 64, 500 steps, eager.
GPU = ["model=gpu_tiny", "trainer=gpu", "trainer.compile=false", "trainer.micro_batch_size=64", "trainer.max_steps=500",
       "trainer.eval_interval=500", "trainer.eval_iters=10", "trainer.ckpt_interval=0"]
TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64", "data.max_chars=400000",
        "data.vocab_size=512", "trainer.device=cpu", "trainer.micro_batch_size=8", "trainer.max_steps=30",
        "trainer.eval_interval=30", "trainer.eval_iters=2", "trainer.threads=1", "monitor.stuck_after=0"]


def lrs(n: int) -> list[str]:
    """n peak LRs spread log-evenly over [1e-3, 8e-3]."""
    return [f"{1e-3 * 8 ** (i / max(1, n - 1)):.4g}" for i in range(n)]


class ModeFailed(Exception):
    pass


def run(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ModeFailed(f"{' '.join(cmd[:6])} ... failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def mode_commands(mode: str, train: list[str], common: list[str], values: list[str], folder: Path) -> list[list[str]]:
    """The train.py command lines of one mode (the GPU suite's test composes each through the precheck)."""
    if mode == "sequential":
        return [train + common + [f"optim.lr={lr}", f"hydra.run.dir={folder}/{i}"] for i, lr in enumerate(values)]
    launcher = {"sweep": [], "stacked": ["hydra/launcher=stacked"],
                "parallel": ["hydra/launcher=parallel", f"hydra.launcher.n_jobs={len(values)}"]}[mode]
    return [train + ["-m", *common, *launcher, f"optim.lr={','.join(values)}", f"hydra.sweep.dir={folder}"]]


def job_dirs(folder: Path) -> list[Path]:
    """Run directories in job order (named <n> or <n>_<overrides>)."""
    found = [d for d in folder.iterdir() if (d / ".hydra").is_dir()]
    return sorted(found, key=lambda d: int(d.name.split("_")[0]))


def check(dirs: list[Path], n: int) -> list[dict]:
    """Every run completed with its own records, checkpoint and summary."""
    if len(dirs) != n:
        raise ModeFailed(f"expected {n} run directories, found {len(dirs)}")
    summaries = []
    for d in dirs:
        s = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
        if s.get("status") != "completed" or not (d / "metrics.jsonl").exists() or not s.get("checkpoint"):
            raise ModeFailed(f"{d} did not complete with records, a checkpoint and a summary: {s.get('status')}")
        summaries.append(s)
    return summaries


def prepare(overrides: list[str]) -> None:
    """The runs' token cache, prepared here (the runs start in ROOT: a relative data.cache_dir is
    taken from there); a config train.py would refuse is refused here, in its one line."""
    import dataclasses

    from minigpt.data.cache import prepare_data
    from minigpt.launch.compose import compose

    data = compose(overrides).data
    if not Path(data.cache_dir).is_absolute():
        data = dataclasses.replace(data, cache_dir=str(ROOT / data.cache_dir))
    prepare_data(data, log=lambda line: print(line, flush=True), progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--modes", default="sequential,stacked,parallel")
    parser.add_argument("--tiny", action="store_true", help="CPU-sized runs (a smoke test of the script)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_sweep")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for every run")
    args = parser.parse_args()

    common = (TINY if args.tiny else GPU) + ["trainer.progress=false"] + args.overrides
    values = lrs(args.runs)
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    train = [sys.executable, str(ROOT / "train.py")]

    print(f"preparing the token cache ({' '.join(common)})", flush=True)
    try:
        prepare(common)
    except UserError as e:
        sys.exit(f"error: {e}")

    import torch

    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        sys.exit(f"error: unknown mode '{unknown[0]}'; valid: {', '.join(MODES)}")
    results, failed = {}, {}
    for mode in modes:
        folder = out / mode
        if folder.exists():
            sys.exit(f"error: {folder} exists; pass another --out")
        try:
            wall = sum(run(cmd, env) for cmd in mode_commands(mode, train, common, values, folder))
            summaries = check(job_dirs(folder), args.runs)
        except ModeFailed as e:  # recorded; the other modes still run
            failed[mode] = str(e)[:3000]
            print(f"{mode:>10}: failed: {str(e).splitlines()[0]}", flush=True)
            write_report(out, args.runs, common, values, results, failed, torch.__version__)
            continue
        results[mode] = {
            "wall_s": round(wall, 2),
            # each run's own training time: for stacked runs it is the stack's, shared by all of them
            "train_time_s_per_run": [s["train_time_s"] for s in summaries],
            "tokens": sum(s["tokens"] for s in summaries),
            "final_val_loss": [s["final_val_loss"] for s in summaries],
            "device": summaries[0]["device"],
        }
        print(f"{mode:>10}: {wall:7.1f} s wall for {args.runs} runs", flush=True)
        # after every mode: a sweep cut short (a time limit) keeps the modes it finished
        write_report(out, args.runs, common, values, results, failed, torch.__version__)

    print(f"\n{'mode':>10} {'wall s':>8} {'speed-up':>9} {'val loss diff':>14}")
    for mode, r in results.items():
        print(f"{mode:>10} {r['wall_s']:8.1f} {r.get('speedup_vs_sequential', float('nan')):9.2f} "
              f"{r.get('max_val_loss_diff_vs_sequential', float('nan')):14.5f}")
    device = next(iter(results.values()))["device"] if results else None
    print(f"device: {device}, torch {torch.__version__}; details in {out / 'bench.json'}")
    if failed:
        sys.exit(f"error: {len(failed)} mode(s) failed: {', '.join(failed)} (bench.json has the others' figures)")


MODES = ("sequential", "sweep", "stacked", "parallel")


def write_report(out: Path, runs: int, common: list[str], values: list[str], results: dict, failed: dict,
                 torch_version: str) -> None:
    """<out>/bench.json with the modes measured so far (speed-ups once the sequential baseline is in)."""
    if "sequential" in results:
        base = results["sequential"]
        for r in results.values():
            r["speedup_vs_sequential"] = round(base["wall_s"] / r["wall_s"], 2)
            r["max_val_loss_diff_vs_sequential"] = round(
                max(abs(a - b) for a, b in zip(r["final_val_loss"], base["final_val_loss"])), 5)
    report = {"runs": runs, "overrides": common, "lrs": values, "torch": torch_version,
              "device": next(iter(results.values()))["device"] if results else None, "results": results,
              "failed": failed}
    tmp = out / "bench.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out / "bench.json")


if __name__ == "__main__":
    main()
