"""Moved: `minigpt report` (minigpt/tools/report.py); this old path still runs it, and says so."""
import sys

from minigpt.tools.report import main

print("scripts/report.py moved: run `minigpt report ...` (minigpt/tools/report.py)", file=sys.stderr)
sys.exit(main(prog="minigpt report"))
