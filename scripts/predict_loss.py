"""Moved: `minigpt predict` (minigpt/tools/predict.py); this old path still runs it, and says so."""
import sys

from minigpt.tools.predict import main

print("scripts/predict_loss.py moved: run `minigpt predict ...` (minigpt/tools/predict.py)", file=sys.stderr)
sys.exit(main(prog="minigpt predict"))
