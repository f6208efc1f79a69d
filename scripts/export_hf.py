"""Moved: `minigpt export-hf` (minigpt/tools/export_hf.py); this old path still runs it, and says so."""
import sys

from minigpt.tools.export_hf import main

print("scripts/export_hf.py moved: run `minigpt export-hf ...` (minigpt/tools/export_hf.py)", file=sys.stderr)
sys.exit(main(prog="minigpt export-hf"))
