"""The `minigpt` command (pyproject's console script; `python -m minigpt` too): one name for the
trainer and the tools that read what it wrote.

    minigpt train scheduler=wsd optim.lr=3e-3        # the same as `python train.py ...`
    minigpt plot-run outputs/cpu-wsd/<date>
    minigpt sample outputs/cpu-wsd/<date> --prompt "def main("
    minigpt report multirun/<date>
    minigpt plot-schedules wsd cosine_warmup --total-steps 1000 -o schedules.png
    minigpt predict fit outputs/cpu-*/<date> -o fit.json
    minigpt export-hf outputs/cpu-wsd/<date> -o exported/my-gpt

`minigpt <tool> --help` explains a tool, with examples. Each tool lives in minigpt/tools/<tool>.py
(its arguments; the work is the package's); `train` is minigpt/launch/train.py, Hydra's app.
"""

from __future__ import annotations

import difflib
import importlib
import sys

# name -> (module, one line for the listing). Imported only when chosen: `minigpt --help` and a
# mistyped name answer without importing torch or Hydra.
TOOLS = {
    "train": ("minigpt.launch.train", "train a GPT (Hydra overrides, as python train.py; train --help lists them)"),
    "report": ("minigpt.tools.report", "compare the jobs of a sweep: a table and figures"),
    "plot-run": ("minigpt.tools.plot_run", "draw one run's loss, LR, gradient norm and spikes"),
    "plot-schedules": ("minigpt.tools.plot_schedules", "draw learning-rate schedules"),
    "predict": ("minigpt.tools.predict", "fit a loss law to runs, predict schedules' losses, search a better one"),
    "sample": ("minigpt.tools.sample", "sample text from a checkpoint"),
    "export-hf": ("minigpt.tools.export_hf", "write a checkpoint as a Hugging Face GPT-2 folder (transformers loads it)"),
}


def usage() -> str:
    width = max(map(len, TOOLS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in TOOLS.items()]
    return "usage: minigpt <tool> [arguments]   (minigpt <tool> --help: its arguments)\n\ntools:\n" + "\n".join(lines) \
        + "\n\nexamples:\n" + __doc__.split("\n\n")[1].strip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in TOOLS:
        close = difflib.get_close_matches(name, TOOLS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"error: unknown tool '{name}'{hint}; valid: {', '.join(TOOLS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(TOOLS[name][0])
    if name == "train":  # Hydra's app reads sys.argv itself; its messages name the command
        sys.argv = [f"minigpt {name}", *rest]
        module.main()
        return 0
    return module.main(rest, prog=f"minigpt {name}")


if __name__ == "__main__":
    sys.exit(main())
