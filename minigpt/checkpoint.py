"""Checkpoints: atomic save and safe load of everything needed to resume a run exactly.

A checkpoint is one file, `<run_dir>/checkpoints/step_XXXXXXX.pt`, holding plain tensors,
numbers, strings, lists and dicts only: it is loaded with `weights_only=True`, so opening one
can never run code. It is written to a temporary file and renamed, so a crash in the middle
of a save leaves the previous checkpoint whole.

A resumed run must build the same model from the same tokens as the run that wrote the
checkpoint; `resume_config_changes` compares the two configs, refuses a change of the model's
shape or of the data (tokenizer included) and lists the changes that are safe. Resuming from
a checkpoint of another run directory starts a branch (`continue_records`).
"""

from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path

import torch

from minigpt.errors import UserError
from minigpt.metrics import read_metrics, truncate_metrics, write_metrics
from minigpt.model import GPTConfig
from minigpt.runtime import set_rng_state

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step_(\d+)\.pt$")

# Config keys a resume must keep: the model's shape (the saved weights would not fit another:
# every field of the model's config but the vocabulary, which the tokenizer fixes, and the
# dropout and z-loss, which a resumed run may change) and everything under data. except where
# the cache lives (which tokens the run sees).
FIXED_MODEL_KEYS = tuple(f.name for f in fields(GPTConfig) if f.name not in ("vocab_size", "dropout", "z_loss"))
MOVABLE_DATA_KEYS = ("cache_dir",)


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:07d}.pt"


def checkpoint_step(path: Path) -> int | None:
    """The step in a checkpoint's file name."""
    m = _NAME.search(Path(path).name)
    return int(m.group(1)) if m else None


def save_checkpoint(state: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")  # not named like a checkpoint: list_checkpoints skips it
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed save leaves no litter; the previous checkpoint is untouched
        raise
    return path


def load_checkpoint(path: Path, key: str = "trainer.resume", mmap: bool = False) -> dict:
    """Load a checkpoint safely (`weights_only`); anything else is one-line UserError naming `key`.

    mmap=True maps the tensors instead of reading them, for a quick look at the config."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{key}: '{path}' is not a file; give a checkpoint (.pt) path or trainer.resume=auto")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        if "Weights only load failed" in str(e):  # a pickle of arbitrary objects: loading it could run code
            found = re.search(r"GLOBAL (\S+)", str(e))
            what = f"a Python object ({found.group(1)})" if found else "Python objects"
            raise UserError(f"{key}: '{path}' holds {what} that a safe weights_only load refuses, so it is not "
                            "a minigpt checkpoint and is not opened") from None
        raise UserError(f"{key}: '{path}' is not a minigpt checkpoint ({type(e).__name__}); "
                        "give a file from a run's checkpoints/ folder") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise UserError(f"{key}: '{path}' is not a minigpt checkpoint (no model or step in it)")
    return state


def resume_config_changes(saved: dict, new: dict, path: Path) -> list[str]:
    """The safe changes between a checkpoint's config and a resumed run's, as 'key: old -> new'.

    Raises UserError naming every key that changes the model's shape or the data."""
    old, cur = flatten(saved), flatten(new)
    keys = sorted(set(old) | set(cur))
    changed = [k for k in keys if old.get(k) != cur.get(k) and k != "trainer.resume"]
    fixed = [k for k in changed if (k.startswith("model.") and k.split(".", 1)[1] in FIXED_MODEL_KEYS)
             or (k.startswith("data.") and k.split(".", 1)[1] not in MOVABLE_DATA_KEYS)]
    if fixed:
        diffs = ", ".join(f"{k} ({old.get(k)!r} -> {cur.get(k)!r})" for k in fixed)
        raise UserError(f"trainer.resume: the model shape, data and tokenizer must stay as in {path}, but {diffs}; "
                        "resume with the values it was trained with, or start a new run without trainer.resume")
    return [f"{k}: {old.get(k)!r} -> {cur.get(k)!r}" for k in changed]


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
    """Delete all but the newest `keep` checkpoints (never the newest) and the temporary files
    of saves that a crash interrupted; return the checkpoints deleted."""
    found = list_checkpoints(run_dir)
    doomed = found[: max(0, len(found) - max(1, keep))]
    for p in doomed:
        p.unlink(missing_ok=True)
    for leftover in (Path(run_dir) / CHECKPOINT_DIR).glob("step_*.pt.tmp"):  # called after a save completed
        leftover.unlink(missing_ok=True)
    return doomed


def flatten(d: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}"""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --- run state: resume and branch -----------------------------------------------------------


def find_resume(run_dir: Path, resume: str, config: dict, say) -> tuple[Path, dict] | None:
    """The checkpoint that trainer.resume names and its state, after checking its config against
    `config`; None for resume=auto in a folder without one."""
    path = latest_checkpoint(run_dir) if resume == "auto" else Path(resume)
    if path is None:
        return None
    state = load_checkpoint(path)
    changes = resume_config_changes(state.get("config", {}), config, path)
    if changes:
        say("resume: config changes from the checkpoint: " + "; ".join(changes))
    return path, state


def load_states(state: dict, **parts) -> None:
    """Load a checkpoint's states into the run's parts (model, optimizer, scaler (None: none),
    monitor), and its RNG state into this process."""
    for name, part in parts.items():
        if part is not None and state.get(name) is not None:
            part.load_state_dict(state[name])
    set_rng_state(state["rng"])


def check_compatible(state: dict, path: Path, model_config: dict, data_key: str) -> None:
    """Refuse a checkpoint whose model or tokens differ (its config was compared already)."""
    saved = state.get("model_config", {})
    diff = [f"model.{k} ({saved.get(k)} -> {model_config[k]})" for k in ("vocab_size", *FIXED_MODEL_KEYS)
            if saved.get(k) != model_config[k]]
    if diff:
        raise UserError(f"trainer.resume: {path} is a checkpoint of another model: {', '.join(diff)}; "
                        "resume with the model config it was trained with")
    if state.get("data_key") != data_key:
        raise UserError(f"trainer.resume: {path} was trained on other tokens: the same data config now gives "
                        f"token cache {data_key}, not {state.get('data_key')} (the corpus files "
                        "changed?); resume with the corpus it was trained on")


def is_branch(path: Path, run_dir: Path) -> bool:
    """Whether resuming `run_dir` from checkpoint `path` starts a branch (another run's checkpoint)."""
    return Path(path).resolve().parent.parent != Path(run_dir).resolve()


def continue_records(run_dir: Path, path: Path | None, step: int, say) -> Path | None:
    """Make metrics.jsonl and checkpoints/ of `run_dir` those of a run resumed from `path` at
    `step` (main rank only); return `path` when the resume is a branch.

    No checkpoint: a run killed before its first one starts over, so its records go. A
    checkpoint of another run directory starts a branch (e.g. a WSD cooldown off a stable
    phase): a run of its own, whose records begin with the parent's up to the branch step."""
    run_dir = Path(run_dir)
    if path is None:
        dropped = truncate_metrics(run_dir, 0)
        say(f"resume: no checkpoint in {run_dir}; starting from step 0"
            + (f"; dropped {dropped} records of the earlier attempt" if dropped else ""))
        return None
    if is_branch(path, run_dir):
        parent = [r for r in read_metrics(path.resolve().parent.parent) if r.get("step", -1) < step]
        write_metrics(run_dir, parent)
        say(f"branch: from {path} at step {step}, a new run in {run_dir} ({len(parent)} records of the parent copied)")
        return path
    dropped = truncate_metrics(run_dir, step)
    # Checkpoints past the resumed step belong to the history just dropped (a rewind with
    # trainer.resume=<path>): left in place they would mix two runs under resume=auto.
    later = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) > step]
    for p in later:
        p.unlink()
    say(f"resume: from {path} at step {step}" + (f"; dropped {dropped} records after it" if dropped else "")
        + (f"; deleted {len(later)} later checkpoints" if later else ""))
    return None
