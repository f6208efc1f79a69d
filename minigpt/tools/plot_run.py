"""Draw a run's loss, learning rate, gradient norm and spike markers into one PNG.

examples:
    minigpt plot-run outputs/cpu-cosine_warmup/2025-01-01_12-00-00
    minigpt plot-run RUN_DIR -o run.png

Reads RUN_DIR/metrics.jsonl (and summary.json, for the divergence step and the unigram
entropy, when it is there). The PNG goes to RUN_DIR/run.png unless -o says otherwise. Works on
a run that is still going: it draws the records written so far.
"""

import json
import sys
from pathlib import Path

from minigpt.plots import plot_run
from minigpt.run.metrics import METRICS_FILE, SUMMARY_FILE, read_metrics
from minigpt.tools import parser
from minigpt.run.keys import Key


def main(argv=None, prog=None) -> int:
    ap = parser(__doc__, prog)
    ap.add_argument("run_dir", type=Path, help="a run directory written by train.py")
    ap.add_argument("-o", "--out", type=Path, help="PNG to write (default RUN_DIR/run.png)")
    ap.add_argument("--title", help="figure title (default: status, final val loss and length from summary.json)")
    args = ap.parse_args(argv)

    records = read_metrics(args.run_dir)
    if not any(Key.LOSS in r for r in records):
        where = args.run_dir / METRICS_FILE
        why = "does not exist" if not where.exists() else "holds no training records yet"
        print(f"error: {where} {why}; give a run directory written by train.py", file=sys.stderr)
        return 2
    summary_path = args.run_dir / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    out = args.out or args.run_dir / "run.png"
    plot_run(records, out, summary=summary, title=args.title)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
