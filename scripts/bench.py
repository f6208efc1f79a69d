"""Time training steps of one or more configurations on this machine.

    python scripts/bench.py                                   # the default config (sized for a CPU)
    python scripts/bench.py --preset gpt2_small --preset gpt2_small_fp16
    python scripts/bench.py -c "model=gpu_small trainer=gpu" -c "model=gpu_small trainer=gpu trainer.micro_batch_size=64"
    python scripts/bench.py --preset gpt2_small trainer.micro_batch_size=16     # overrides apply to every config
    python scripts/bench.py --preset cpu --compare-logging --repeats 5

Each configuration is composed from conf/ exactly as train.py composes it (Hydra's compose
API, the same overrides), built by the real minigpt Trainer, and run through trainer.advance()
-- the body of the training loop (minigpt/run/trainer.py fit()): the optimizer step, the per-step record, the spike monitor and
metrics.jsonl. Evaluation and checkpoints are left out. The first --warmup steps (where
torch.compile compiles) are timed separately; then --steps steps are timed. Each configuration
runs in a fresh process, so its peak memory is its own.

Reported per configuration: ms per step, tokens/s, MFU (FLOPs per token 6N + 12*L*C*T over the
device's dense bf16 peak from minigpt/run/perf.py; null on a CPU or an unknown GPU), peak memory
(CUDA: max_memory_allocated; CPU: the process's peak resident set size) and the compile time
(the warm-up's time beyond what the same number of timed steps takes; null without compile).

--compare-logging times, in the same process and interleaved, the steps with everything on
(advance()) and with records and monitor off (train_step() alone, its per-step values
dropped), and reports the overhead of logging in percent. Both modes do the few device-side
scalar ops that gather a step's values (a sum, a max and a stack of about three scalars);
what differs is the hand-off to the host, the spike monitor and the metrics file. Every run
also reports record_host_ms_per_step: the host time spent in that hand-off per step, which on a
CPU adds to the step one for one and is far less noisy than the difference of two timings.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import shlex
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

from minigpt.launch.compose import compose  # noqa: E402
from minigpt.config import config_from_dict  # noqa: E402
from minigpt.errors import UserError  # noqa: E402

PRESETS = {
    "cpu": [],  # the default: 4 layers, 128 wide, context 128, micro-batch 16, fp32
    "gpu_tiny": ["model=gpu_tiny", "trainer=gpu"],
    "gpu_small": ["model=gpu_small", "trainer=gpu"],
    # GPT-2 small (124M): bf16, torch.compile, fused AdamW, micro-batch 32, context 1024
    "gpt2_small": ["model=gpt2_small", "trainer=gpu", "data.vocab_size=50257"],
    "gpt2_small_fp16": ["model=gpt2_small", "trainer=gpu", "data.vocab_size=50257", "trainer.precision=fp16"],
}


def bench_config(overrides: list[str], n_steps: int) -> dict:
    """The typed config train.py would run with these overrides, as plain dicts (bad input: one
    line, before any process starts)."""
    # The run length only sets the schedule's length here; the bench decides how many steps run.
    forced = [f"trainer.max_steps={n_steps}", "trainer.max_tokens=null", "trainer.epochs=null",
              "trainer.progress=false", "trainer.resume=null", "logger.wandb=false"]
    return compose(overrides + forced).to_dict()


def bench_one(raw: dict, warmup: int, steps: int, compare: bool, repeats: int) -> dict:
    """Build the Trainer, warm up, time; runs in its own process."""
    import resource

    import torch

    from minigpt.run.metrics import MetricsLogger
    from minigpt.run.stepper import ModelStepper
    from minigpt.run.trainer import Trainer, advance

    cfg = config_from_dict(raw)
    with tempfile.TemporaryDirectory(prefix="minigpt-bench-") as run_dir:
        trainer = Trainer(cfg, Path(run_dir), quiet=True)
        cuda = trainer.device.type == "cuda"

        def sync():
            if cuda:
                torch.cuda.synchronize(trainer.device)

        if cuda:
            torch.cuda.reset_peak_memory_stats(trainer.device)
        trainer.metrics = MetricsLogger(Path(run_dir), cfg.logger, config=cfg.to_dict(),
                                        total_steps=trainer.total_steps, progress=False)

        stepper = ModelStepper(trainer)

        def timed(n: int, logging: bool) -> float:
            """Seconds for n steps, from a drained device to a drained device."""
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                if logging:
                    advance(stepper)
                else:  # the same step, its per-step values never leave the device
                    stepper.train_step()
                    stepper.parts.records.discard()
            if logging:
                trainer.flush(wait=True)
            sync()
            return time.perf_counter() - t0

        warmup_s = timed(warmup, logging=True)
        # Host time spent handing records over (device -> host copy, spike monitor, metrics.jsonl):
        # on a CPU it adds to the step directly, so it is the logging cost measured without the
        # noise of two timed runs.
        flush_before = trainer.flush_seconds
        on, off = [], []
        for _ in range(repeats if compare else 1):
            on.append(timed(steps, logging=True))
            if compare:
                off.append(timed(steps, logging=False))
        trainer.metrics.close()
        flush_seconds = trainer.flush_seconds - flush_before

    step_s = statistics.median(on) / steps
    logged_steps = steps * len(on)
    tok_s = trainer.plan.tokens_per_step / step_s
    peak = trainer.peak_flops
    if cuda:
        memory_mb = torch.cuda.max_memory_allocated(trainer.device) / 2**20
        memory_kind = "cuda_max_allocated"
        device = torch.cuda.get_device_name(trainer.device)
    else:
        memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        memory_kind = "cpu_peak_rss"
        device = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    tc = cfg.trainer
    result = {
        "device": device,
        "torch": torch.__version__,
        "precision": trainer.precision,
        "compile": tc.compile,
        "compile_backend": tc.compile_backend if tc.compile else None,
        "n_layer": cfg.model.n_layer, "n_embd": cfg.model.n_embd, "block_size": cfg.model.block_size,
        "vocab_size": stepper.parts.model_config.padded_vocab_size,
        "n_params": stepper.parts.model.num_params(),
        "micro_batch_size": tc.micro_batch_size,
        "grad_accum": trainer.plan.grad_accum,
        "tokens_per_step": trainer.plan.tokens_per_step,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "ms_per_step": round(step_s * 1000, 3),
        "tokens_per_s": round(tok_s, 1),
        "flops_per_token": trainer.flops_per_token,
        "peak_flops": peak,
        "mfu": round(trainer.flops_per_token * tok_s / peak, 4) if peak else None,
        "peak_memory_mb": round(memory_mb, 1),
        "memory_kind": memory_kind,
        "warmup_s": round(warmup_s, 3),
        # What the warm-up took beyond the same number of steady steps: compilation (and
        # first-touch allocation, which is small next to it).
        "compile_s": round(max(0.0, warmup_s - warmup * step_s), 3) if tc.compile else None,
        "record_host_ms_per_step": round(flush_seconds / logged_steps * 1000, 4),
    }
    if compare:
        off_s = statistics.median(off) / steps
        result.update({
            "repeats": repeats,
            "ms_per_step_logging_off": round(off_s * 1000, 3),
            "tokens_per_s_logging_off": round(trainer.plan.tokens_per_step / off_s, 1),
            "logging_overhead_pct": round(100 * (step_s - off_s) / off_s, 2),
            "ms_per_step_all": [round(s / steps * 1000, 3) for s in on],
            "ms_per_step_logging_off_all": [round(s / steps * 1000, 3) for s in off],
        })
    return result


def run_isolated(*args) -> dict:
    """bench_one in a fresh process (spawned: no state, no memory peak carried over). The
    executor lets the worker exit normally, so torch.compile's worker pools shut down cleanly."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(bench_one, *args).result()


def table(results: list[dict], compare: bool) -> str:
    cols = ["config", "device", "precision", "compile", "tokens/step", "ms/step", "tokens/s", "MFU",
            "peak mem MiB", "compile s"]
    if compare:
        cols += ["ms/step logging off", "logging overhead %", "record host ms/step"]
    rows = []
    for r in results:
        row = [r["name"], r["device"], r["precision"], r["compile_backend"] or "off", f"{r['tokens_per_step']:,}",
               f"{r['ms_per_step']:.1f}", f"{r['tokens_per_s']:,.0f}",
               f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a",
               f"{r['peak_memory_mb']:,.0f}" + (" (RSS)" if r["memory_kind"] == "cpu_peak_rss" else ""),
               f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"]
        if compare:
            row += [f"{r['ms_per_step_logging_off']:.1f}", f"{r['logging_overhead_pct']:+.2f}",
                    f"{r['record_host_ms_per_step']:.3f}"]
        rows.append(row)
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(cols, widths)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides applied to every configuration")
    ap.add_argument("-c", "--config", action="append", default=[], metavar="OVERRIDES",
                    help='one configuration as a quoted list of overrides, e.g. -c "model=gpu_small trainer=gpu"')
    ap.add_argument("-p", "--preset", action="append", default=[], choices=sorted(PRESETS),
                    help="one named configuration: " + "; ".join(f"{k}: {' '.join(v) or '(defaults)'}"
                                                              for k, v in PRESETS.items()))
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--compare-logging", action="store_true",
                    help="also time the steps with records and spike monitor off; report the overhead")
    ap.add_argument("--repeats", type=int, default=3, help="with --compare-logging: interleaved on/off rounds")
    ap.add_argument("--out", default="bench.json", help="JSON file to write (default bench.json)")
    args = ap.parse_args(argv)

    try:
        for key in ("warmup", "steps", "repeats"):
            if getattr(args, key) < (0 if key == "warmup" else 1):
                raise UserError(f"--{key} must be >= {0 if key == 'warmup' else 1}; got {getattr(args, key)}")
        configs = [(name, PRESETS[name]) for name in args.preset]
        configs += [(text, shlex.split(text)) for text in args.config]
        if not configs:
            configs = [("default", [])]
        rounds = args.repeats if args.compare_logging else 1
        n_steps = args.warmup + args.steps * rounds * (2 if args.compare_logging else 1)
        composed = [(name, ovr + args.overrides, bench_config(ovr + args.overrides, n_steps)) for name, ovr in configs]
        results = []
        for name, ovr, raw in composed:
            shown = " ".join(ovr) or "defaults"
            print(f"bench: {name}{f' ({shown})' if shown != name else ''}: {args.warmup} warm-up + "
                  f"{args.steps} timed steps" + (f" x {rounds} rounds, logging on and off" if args.compare_logging else ""),
                  flush=True)
            result = run_isolated(raw, args.warmup, args.steps, args.compare_logging, args.repeats)
            result = {"name": name, "overrides": ovr,
                      "command": " ".join(["python scripts/bench.py", *map(shlex.quote, ovr),
                                           f"--warmup {args.warmup} --steps {args.steps}"]
                                          + ([f"--compare-logging --repeats {args.repeats}"]
                                             if args.compare_logging else [])),
                      **result}
            results.append(result)
            # Each row on disk as soon as it is measured: a run cut short keeps the rows before it.
            write_results(Path(args.out), results)
            print(f"bench: {name}: {result['tokens_per_s']:,.0f} tokens/s (written to {args.out})", flush=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(results, args.compare_logging))
    print(f"wrote {args.out}")
    return 0


def write_results(path: Path, results: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"results": results}, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
