"""Moved: `minigpt plot-schedules` (minigpt/tools/plot_schedules.py); this old path still runs it, and says so."""
import sys

from minigpt.tools.plot_schedules import main

print("scripts/plot_schedules.py moved: run `minigpt plot-schedules ...` (minigpt/tools/plot_schedules.py)", file=sys.stderr)
sys.exit(main(prog="minigpt plot-schedules"))
