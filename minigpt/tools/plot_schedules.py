"""Draw registered learning-rate schedules into one PNG (one panel per schedule).

examples:
    minigpt plot-schedules --total-steps 1000 -o docs/images/schedules.png
    minigpt plot-schedules wsd cosine_warmup --total-steps 500 2000 \
        --set wsd.decay_shape=cosine --set cosine_warmup.warmup="10%" -o /tmp/s.png

Parameters not given with --set take their defaults (their dataclasses in minigpt/schedules.py,
which scheduler=<name> composes too).
Lengths accept the same forms as the configs: 300, 0.05, "5%", "300 steps", "2M tokens"
(with --tokens-per-step).
"""

import argparse
import ast
import importlib
import sys

from minigpt.errors import UserError
from minigpt.plots import plot_schedules
from minigpt.schedules import list_schedules, schedule_from_config
from minigpt.tools import parser


def parse_value(text: str):
    """A --set value: null/true/false, a Python literal (3, 0.1, [0.5, 0.75]) or else a string."""
    lowered = text.strip().lower()
    if lowered in ("null", "none", "~"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv=None, prog=None) -> int:
    ap = parser(__doc__, prog)
    ap.add_argument("names", nargs="*", help="schedules to draw (default: every registered one)")
    # extend: `--names a --names b` draws (and prints the line of) both, as `--names a b` does
    # --names: as before the names were positional
    ap.add_argument("--names", nargs="+", action="extend", dest="names_option", help=argparse.SUPPRESS)
    ap.add_argument("--total-steps", nargs="+", type=int, action="extend", help="run length(s) in steps (default 1000)")
    ap.add_argument("--peak-lr", type=float, default=1.0, help="peak LR (default 1.0: draw the multiplier)")
    ap.add_argument("--tokens-per-step", type=int, help="tokens per optimizer step, for lengths given in tokens")
    ap.add_argument("--set", action="append", default=[], metavar="NAME.PARAM=VALUE", help="override a parameter")
    ap.add_argument("--module", action="append", default=[], help="import this module first (your own schedules)")
    ap.add_argument("-o", "--out", default="schedules.png", help="PNG to write")
    args = ap.parse_args(argv)
    args.names = args.names + (args.names_option or [])

    try:
        for module in args.module:
            importlib.import_module(module)
        names = args.names or list_schedules()
        args.total_steps = args.total_steps or [1000]
        overrides: dict[str, dict] = {}
        for item in args.set:
            name, _, rest = item.partition(".")
            key, eq, value = rest.partition("=")
            if not (name and key and eq):
                raise UserError(f"--set {item!r}: expected NAME.PARAM=VALUE, e.g. --set wsd.decay=0.1")
            if name not in names:
                raise UserError(f"--set {item!r}: '{name}' is not among the drawn schedules ({', '.join(names)})")
            overrides.setdefault(name, {})[key] = parse_value(value)
        schedules = [
            schedule_from_config({"name": name, **overrides.get(name, {})}, total, args.tokens_per_step)
            for name in names
            for total in args.total_steps
        ]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for s in schedules:
        print(s.summary_line(args.peak_lr))
    plot_schedules(schedules, args.peak_lr, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
