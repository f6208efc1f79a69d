"""Write the GPU suite's figures into the docs, so that no GPU figure is typed by hand.

    python scripts/update_docs_from_results.py gpu_results            # README.md and docs/*.md
    python scripts/update_docs_from_results.py gpu_results --check    # exit 1 if a page would change
    python scripts/update_docs_from_results.py gpu_results/gpu_a gpu_results/gpu_b   # the suite's two commands

The docs hold marked blocks,

    <!-- gpu-results:NAME -->
    ...
    <!-- /gpu-results:NAME -->

and this script rewrites the inside of every block from the results folders that
scripts/gpu_suite.py wrote (suite.json and <stage>/stage.json; the suite runs as two commands,
each with a folder of its own: their stages are read together). NAME is one of: bench (GPT-2
small throughput, MFU, memory), logging (the cost of per-step records), sweep (8 small runs per
GPU), smoke (the CUDA smoke test), warmup (the warmup study's headline cells on the GPU).
Every figure is written with the GPU's name and the torch and CUDA versions it came from; a
stage that failed or did not run says so instead of a number. A dry run's results (CPU) are
refused: they are no GPU figures.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- gpu-results:(?P<name>[a-z_-]+) -->\n)(?P<body>.*?)(<!-- /gpu-results:(?P=name) -->)", re.S)

TARGET_TOKENS_PER_S = 575_000  # GPT-2 small, one H100, bf16, records on
TARGET_LOGGING_PCT = 1.0
TARGET_SWEEP_SPEEDUP = 4.0


class ResultsError(Exception):
    pass


def load(folder: Path) -> dict:
    """suite.json and every stage.json of a results folder."""
    suite_file = folder / "suite.json"
    if not suite_file.exists():
        raise ResultsError(f"{folder} holds no suite.json; pass the folder scripts/gpu_suite.py --out wrote")
    suite = json.loads(suite_file.read_text())
    if suite["machine"].get("dry_run") or not suite["machine"].get("gpu"):
        raise ResultsError(f"{folder} holds a CPU dry run, not GPU figures; run scripts/gpu_suite.py on a GPU")
    stages = {}
    for name in suite["stages"]:
        path = folder / name / "stage.json"
        if path.exists():
            stages[name] = json.loads(path.read_text())
    return {"machine": suite["machine"], "stages": stages}


def load_all(folders: list[Path]) -> dict:
    """The stages of several results folders together (the suite's two commands); the machine is
    the first folder's, and every folder must come from the same GPU."""
    parts = [load(f) for f in folders]
    gpus = {p["machine"]["gpu"] for p in parts}
    if len(gpus) > 1:
        raise ResultsError(f"the folders come from different GPUs ({', '.join(sorted(gpus))}); update from one GPU's")
    stages = {}
    for p in parts:
        stages.update(p["stages"])
    return {"machine": parts[0]["machine"], "stages": stages}


def where(m: dict) -> str:
    return f"{m['gpu']}, torch {m['torch']}, CUDA {m['cuda']}"


def missing(res: dict, stage: str) -> str | None:
    """A sentence for a stage with no figures, or None when it passed."""
    s = res["stages"].get(stage)
    if s is None:
        return f"not measured: the suite's `{stage}` stage did not run"
    if s["status"] != "passed":
        reasons = "; ".join(f"{c['name']}: {c['status']}" + (f" ({c['reason']})" if c.get("reason") else "")
                            for c in s["commands"] if c["status"] != "passed")
        return f"the `{stage}` stage {s['status']} on {where(res['machine'])}: {reasons}"
    return None


def bench_rows(res: dict) -> list[dict]:
    s = res["stages"].get("bench") or {}
    return [r for rows in (s.get("results") or {}).values() for r in rows]


def render_bench(res: dict) -> str:
    rows = bench_rows(res)
    if not rows:
        return missing(res, "bench") or "not measured: the bench stage wrote no figures"
    lines = ["| config | GPU | precision | micro-batch | tokens/s | ms/step | MFU | peak memory | compile s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        compile_s = f"{r['compile_s']:.0f}" if r.get("compile_s") is not None else "-"
        lines.append(f"| `{' '.join(r['overrides'])}` | {r['device']} | {r['precision']} | {r['micro_batch_size']} | "
                     f"{r['tokens_per_s']:,.0f} | {r['ms_per_step']:.1f} | {mfu} | {r['peak_memory_mb']:,.0f} MiB | "
                     f"{compile_s} |")
    best = max((r for r in rows if r["precision"] == "bf16"), key=lambda r: r["tokens_per_s"], default=None)
    m = res["machine"]
    text = "\n".join(lines) + f"\n\nMeasured by `python scripts/gpu_suite.py` on {where(m)} ({m['date_utc']})."
    if best is not None:
        verdict = "meets" if best["tokens_per_s"] >= TARGET_TOKENS_PER_S else "falls short of"
        text += (f" The best bf16 figure, {best['tokens_per_s']:,.0f} tokens/s with records on, {verdict} the "
                 f"target of {TARGET_TOKENS_PER_S:,} tokens/s.")
    note = missing(res, "bench")
    return text + (f" Not every configuration ran: {note}." if note else "")


def render_logging(res: dict) -> str:
    rows = [r for r in bench_rows(res) if r.get("logging_overhead_pct") is not None]
    if not rows:
        return missing(res, "bench") or "not measured: the bench stage ran no logging comparison"
    lines = ["| config | GPU | ms/step logging on | ms/step logging off | overhead | record host ms/step |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{' '.join(r['overrides'])}` | {r['device']} | {r['ms_per_step']:.2f} | "
                     f"{r['ms_per_step_logging_off']:.2f} | {r['logging_overhead_pct']:+.2f}% | "
                     f"{r['record_host_ms_per_step']:.3f} |")
    worst = max(r["logging_overhead_pct"] for r in rows)
    verdict = "under" if worst < TARGET_LOGGING_PCT else "not under"
    return ("\n".join(lines) + f"\n\nOn {where(res['machine'])}: the largest overhead, {worst:+.2f}%, is {verdict} "
            f"the target of {TARGET_LOGGING_PCT:g}%.")


def render_sweep(res: dict) -> str:
    s = res["stages"].get("sweep") or {}
    report = (s.get("results") or {}).get("bench_sweep")
    if not report:
        return missing(res, "sweep") or "not measured: the sweep stage wrote no figures"
    lines = ["| mode | wall s | speed-up vs sequential | largest final val loss difference |", "|---|---|---|---|"]
    for mode, r in report["results"].items():
        lines.append(f"| {mode} | {r['wall_s']:.1f} | {r.get('speedup_vs_sequential', float('nan')):.2f}x | "
                     f"{r.get('max_val_loss_diff_vs_sequential', float('nan')):.5f} |")
    best = max((r.get("speedup_vs_sequential", 0) for m, r in report["results"].items() if m != "sequential"),
               default=0)
    verdict = "meets" if best >= TARGET_SWEEP_SPEEDUP else "falls short of"
    return ("\n".join(lines) + f"\n\n{report['runs']} runs of `{' '.join(report['overrides'][:2])}` on "
            f"{where(res['machine'])}; the best, {best:.2f}x, {verdict} the target of {TARGET_SWEEP_SPEEDUP:g}x.")


def render_smoke(res: dict) -> str:
    s = res["stages"].get("smoke")
    if s is None:
        return missing(res, "smoke")
    lines = [f"CUDA smoke test on {where(res['machine'])}: **{s['status']}** in {s['wall_s']:.0f} s.", ""]
    for c in s["commands"]:
        lines.append(f"- `{c['name']}`: {c['status']}" + (f" ({c['reason']})" if c.get("reason") else ""))
    return "\n".join(lines)


def render_warmup(res: dict) -> str:
    s = res["stages"].get("warmup") or {}
    cells = (s.get("results") or {}).get("cells")
    if not cells:
        return missing(res, "warmup") or "not measured: no cell of the GPU study finished"
    lines = ["| job | status | peak LR | final val loss | diverged at |", "|---|---|---|---|---|"]
    for c in cells:
        loss = f"{c['final_val_loss']:.3f}" if c.get("final_val_loss") is not None else "-"
        lines.append(f"| {c['job']} | {c['status']} | {c['peak_lr']:g} | {loss} | {c.get('diverged_step') or '-'} |")
    note = missing(res, "warmup")
    return ("\n".join(lines) + f"\n\n{len(cells)} cells on {where(res['machine'])}"
            + (f"; {note}" if note else "") + ".")


RENDER = {"bench": render_bench, "logging": render_logging, "sweep": render_sweep, "smoke": render_smoke,
          "warmup": render_warmup}


def update_text(text: str, res: dict) -> str:
    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in RENDER:
            raise ResultsError(f"unknown block gpu-results:{name}; valid: {', '.join(RENDER)}")
        return f"{match.group(1)}{RENDER[name](res).rstrip()}\n{match.group(4)}"

    return BLOCK.sub(fill, text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("results", type=Path, nargs="+", help="the folder(s) scripts/gpu_suite.py --out wrote")
    ap.add_argument("--docs", type=Path, nargs="*", help="pages to update (default: README.md and docs/*.md)")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page would change")
    args = ap.parse_args(argv)
    try:
        res = load_all(args.results)
        changed = []
        for page in args.docs or DOCS:
            old = page.read_text()
            new = update_text(old, res)
            if new != old:
                changed.append(page)
                if not args.check:
                    page.write_text(new)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    verb = "would change" if args.check else "updated"
    print(f"{verb}: {', '.join(str(p) for p in changed) or 'nothing'}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
