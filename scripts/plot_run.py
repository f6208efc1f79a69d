"""Moved: `minigpt plot-run` (minigpt/tools/plot_run.py); this old path still runs it, and says so."""
import sys

from minigpt.tools.plot_run import main

print("scripts/plot_run.py moved: run `minigpt plot-run ...` (minigpt/tools/plot_run.py)", file=sys.stderr)
sys.exit(main(prog="minigpt plot-run"))
