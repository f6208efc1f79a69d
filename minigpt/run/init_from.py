"""`trainer.init_from`: a new run that starts from another run's weights.

nanoGPT's `init_from=resume` and fine-tuning, without its pitfalls: the weights alone are taken
(a fresh optimizer, this run's schedule and plan from step 0, its own data order), into a new run
folder whose summary.json and log say where they came from (the checkpoint's path, its step and a
hash of the config it was trained with). The model's shape must be the checkpoint's (refused
with the keys that differ and the overrides that fix them); dropout and the z-loss may change.

How it meets the other ways to start a run:
- `trainer.resume=auto` wins when the run folder holds a checkpoint: that is this run continuing
  (after a Ctrl-C or a Slurm requeue, which sets resume=auto), and its checkpoints carry where its
  weights first came from; in a folder without one, init_from starts the run.
- `trainer.resume=<checkpoint>` with init_from is refused (config.py): two sources of weights.
- `trainer.eval_only=true` evaluates init_from's weights and trains nothing (trainer.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from minigpt.errors import UserError
from minigpt.run.checkpoint import FIXED_MODEL_KEYS, checkpoint_to_read

KEY = "trainer.init_from"


def config_hash(config: dict) -> str:
    """A short hash of a run's resolved config: two runs with the same hash were configured alike."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def find_init_checkpoint(source: str, mmap: bool = False) -> tuple[Path, dict]:
    """(path, state) of the checkpoint `source` names: a checkpoint file, or a run folder (its
    newest intact checkpoint), found as the tools find it (checkpoint.checkpoint_to_read). One-line
    UserError naming trainer.init_from otherwise."""
    try:
        return checkpoint_to_read(Path(source).expanduser(), mmap=mmap)
    except UserError as e:
        raise UserError(f"{KEY}: {e}") from None


def find_init_weights(source: str, model: dict, mmap: bool = False) -> tuple[Path, dict]:
    """(path, state) of the checkpoint trainer.init_from names, checked for the shape of `model`
    (the run's model config): the one check of the trainer and of the precheck (mmap=True: the
    tensors mapped, not read). The tokenizer is checked once the data is there (check_tokenizer)."""
    path, state = find_init_checkpoint(source, mmap=mmap)
    check_model_shape(state, path, model)
    return path, state


def origin(path: Path, state: dict) -> dict:
    """What summary.json records of the weights a run started from."""
    return {"path": str(Path(path).resolve()), "step": state["step"], "config_hash": config_hash(state.get("config", {}))}


def check_model_shape(state: dict, path: Path, model: dict) -> None:
    """Refuse a checkpoint whose model shape differs from the run's model config (`model`: the
    run's `model` section as a dict), naming each key and the overrides that match it."""
    saved = state.get("config", {}).get("model", {}) or state.get("model_config", {})
    differ = [k for k in FIXED_MODEL_KEYS if k in saved and saved[k] != model.get(k)]
    if differ:
        diffs = ", ".join(f"model.{k} ({saved[k]!r} in the checkpoint, {model.get(k)!r} here)" for k in differ)
        fix = " ".join(f"model.{k}={_override(saved[k])}" for k in differ)
        raise UserError(f"{KEY}: {path} holds a model of another shape: {diffs}; set {fix}, or start from scratch "
                        "without trainer.init_from")


def check_tokenizer(state: dict, path: Path, tokenizer_json: str) -> None:
    """Refuse a checkpoint trained with another tokenizer than the one the run's data gives: its
    token ids would mean other pieces of text."""
    if state.get("tokenizer") is not None and state["tokenizer"] != tokenizer_json:
        raise UserError(f"{KEY}: {path} was trained with another tokenizer than the one this run's data config gives "
                        "(another corpus or data.vocab_size trains another BPE); use the data settings it was trained "
                        "with, or data.tokenizer=byte for both runs (the byte tokenizer is the same for every corpus)")


def inside(path: Path, run_dir: Path) -> bool:
    """Whether checkpoint `path` lies inside the run folder `run_dir`."""
    return Path(run_dir).resolve() in Path(path).resolve().parents


def _override(value) -> str:
    return {True: "true", False: "false", None: "null"}.get(value, value) if isinstance(value, (bool, type(None))) \
        else str(value)
