"""Checkpoints: atomic save and safe load of everything needed to resume a run exactly.

A checkpoint is one file, `<run_dir>/checkpoints/step_XXXXXXX.pt`, holding plain tensors,
numbers, strings, lists and dicts only: it is loaded with `weights_only=True`, so opening one
can never run code. It is written to a temporary file and renamed, so a crash in the middle
of a save leaves the previous checkpoint whole.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from minigpt.errors import UserError

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step_(\d+)\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:07d}.pt"


def save_checkpoint(state: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"trainer.resume: '{path}' is not a file; give a checkpoint (.pt) path or trainer.resume=auto")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"trainer.resume: '{path}' is not a minigpt checkpoint ({type(e).__name__}); "
                        "give a file from a run's checkpoints/ folder") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise UserError(f"trainer.resume: '{path}' is not a minigpt checkpoint (no model or step in it)")
    return state


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary files of interrupted saves excluded)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (never the newest); return what was deleted."""
    found = list_checkpoints(run_dir)
    doomed = found[: max(0, len(found) - max(1, keep))]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed
