"""Moved: `minigpt sample` (minigpt/tools/sample.py); this old path still runs it, and says so."""
import sys

from minigpt.tools.sample import main

print("scripts/sample.py moved: run `minigpt sample ...` (minigpt/tools/sample.py)", file=sys.stderr)
sys.exit(main(prog="minigpt sample"))
