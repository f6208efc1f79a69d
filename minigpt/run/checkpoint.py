"""Checkpoints as files: atomic save, safe load, checksums, pruning, finding the one to resume.

What a checkpoint holds is the run's (`Trainer.state_dict()` / `load_state_dict()`); this
module writes, checks and finds the files. A checkpoint is one file,
`<run_dir>/checkpoints/step_XXXXXXX.pt`, holding plain tensors, numbers, strings, lists and
dicts only: it is loaded with `weights_only=True`, so opening one
can never run code. It is written to a temporary file, flushed to the disk and renamed, so a
crash in the middle of a save leaves the previous checkpoint whole. Next to it,
`step_XXXXXXX.pt.sha256` holds its SHA-256 (in `sha256sum` format, written before the
checkpoint gets its name); every load checks it, so a checkpoint damaged on the disk is never
trained on: `trainer.resume=auto` falls back to the newest intact one.

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
from minigpt.files import file_sha256, fsync_dir, open_new, write_atomic
from minigpt.run.metrics import UNREADABLE_FILE, check_format, read_metrics, truncate_metrics, write_metrics
from minigpt.model import GPTConfig

CHECKPOINT_DIR = "checkpoints"
CHECKSUM_SUFFIX = ".sha256"
DAMAGED_SUFFIX = ".damaged"  # a checkpoint that failed its check, kept for a person to look at
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
    f = open_new(tmp)  # created exclusively, never through a link (minigpt/files.py)
    try:
        with f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        # The checksum is of the bytes on the disk, and has its name before the checkpoint does:
        # every checkpoint that can be found has one.
        write_atomic(checksum_path(path), f"{file_sha256(tmp)}  {path.name}\n")
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed save leaves no litter; the previous checkpoint is untouched
        raise
    return path


def checksum_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def checkpoint_damage(path: Path) -> str | None:
    """Why a checkpoint file cannot be trusted (empty, its bytes differ from its stored SHA-256,
    or its checksum file is missing while other checkpoints beside it have one), or None. A
    checkpoint without a checksum file in a folder where none has one (saved before minigpt
    stored them) is not called damaged here; loading it still has to succeed."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "the file is empty"
        stored = checksum_path(path)
        if not stored.is_file():
            others = [p.name for p in path.parent.glob(f"step_*.pt{CHECKSUM_SUFFIX}") if p != stored]
            if others:  # minigpt wrote this run's checkpoints with checksums: this one's was deleted
                return (f"its checksum file {stored.name} is missing, while the run's other checkpoints have one "
                        f"(e.g. {max(others)}), so its bytes cannot be checked")
            return None
        expected = stored.read_text().split()[0] if stored.read_text().strip() else ""
        actual = file_sha256(path)
    except OSError as e:
        return f"it cannot be read ({e.strerror})"
    if actual != expected:
        return f"its SHA-256 differs from the one stored in {stored.name} when it was saved"
    return None


class DamagedCheckpoint(UserError):
    """A checkpoint that fails its integrity check or does not load."""


def load_checkpoint(path: Path, key: str = "trainer.resume", mmap: bool = False) -> dict:
    """Load a checkpoint safely (`weights_only`) after checking its checksum; anything else is a
    one-line UserError naming `key` (DamagedCheckpoint for a damaged one).

    mmap=True maps the tensors instead of reading them, for a quick look at the config."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{key}: '{path}' is not a file; give a checkpoint (.pt) path or trainer.resume=auto")
    damage = checkpoint_damage(path)
    if damage:
        raise DamagedCheckpoint(f"{key}: '{path}' is damaged: {damage}; resume from an earlier checkpoint "
                                "(trainer.resume=auto takes the newest intact one)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        if "Weights only load failed" in str(e):  # a pickle of arbitrary objects: loading it could run code
            found = re.search(r"GLOBAL (\S+)", str(e))
            what = f"a Python object ({found.group(1)})" if found else "Python objects"
            raise UserError(f"{key}: '{path}' holds {what} that a safe weights_only load refuses, so it is not "
                            "a minigpt checkpoint and is not opened") from None
        if checksum_path(path).is_file():  # it was saved whole by minigpt, so it must load
            raise DamagedCheckpoint(f"{key}: '{path}' is damaged: it does not load ({type(e).__name__}); resume "
                                    "from an earlier checkpoint (trainer.resume=auto takes the newest intact one)") from None
        raise UserError(f"{key}: '{path}' is not a minigpt checkpoint ({type(e).__name__}); "
                        "give a file from a run's checkpoints/ folder") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise UserError(f"{key}: '{path}' is not a minigpt checkpoint (no model or step in it)")
    check_format(state.get("format_version"), f"{key}: '{path}'")
    return state


def newest_intact_checkpoint(run_dir: Path, mmap: bool = False) -> tuple[Path | None, dict | None, list[tuple[Path, str]]]:
    """(path, state, skipped) of the newest checkpoint of a run folder that passes its check and
    loads; `skipped` lists the newer ones that did not, with the reason. (None, None, skipped)
    when there is none: then a UserError if some were found but every one is damaged."""
    skipped = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path, mmap=mmap), skipped
        except UserError as e:
            skipped.append((path, _reason(e, path)))
    if skipped:
        listed = "; ".join(f"{p.name}: {why}" for p, why in skipped)
        raise DamagedCheckpoint(f"trainer.resume=auto: no intact checkpoint in {Path(run_dir) / CHECKPOINT_DIR} "
                                f"({listed}); resume from a copy you trust with trainer.resume=<path>, or start "
                                "a new run elsewhere")
    return None, None, skipped


def checkpoint_to_read(given: str | Path, mmap: bool = False) -> tuple[Path, dict]:
    """(path, state) of the checkpoint a tool (sample, export-hf) or trainer.init_from reads: a
    checkpoint file, or a run folder's newest intact checkpoint. Its own one-line UserErrors:
    nothing here is a resume, so none speaks of trainer.resume. mmap: as load_checkpoint."""
    path = Path(given)
    if not path.exists():
        raise UserError(f"'{given}' does not exist; give a run folder (its newest checkpoint is read) or a "
                        "checkpoint file (<run folder>/checkpoints/step_*.pt)")
    if path.is_dir():
        if path.name == CHECKPOINT_DIR and not (path / CHECKPOINT_DIR).is_dir():
            path = path.parent  # the run's checkpoints/ folder itself
        try:
            found, state, _ = newest_intact_checkpoint(path, mmap=mmap)
        except DamagedCheckpoint as e:
            raise UserError(f"'{given}': every checkpoint of this run folder is damaged "
                            f"({str(e).partition('(')[2].rpartition(')')[0]})") from None
        if found is None:
            jobs = sorted(d.name for d in path.iterdir() if d.is_dir() and list_checkpoints(d))
            hint = (f"; it is a sweep folder: give one of its jobs, e.g. '{path / jobs[0]}'" if jobs else
                    "; a run writes one at its end and every trainer.ckpt_interval steps: give a run that got that far")
            raise UserError(f"the run folder '{given}' holds no checkpoint (no {CHECKPOINT_DIR}/step_*.pt){hint}")
        return found, state
    try:
        return path, load_checkpoint(path, mmap=mmap)
    except DamagedCheckpoint as e:
        raise UserError(f"'{given}' is damaged: {_reason(e, path)}") from None
    except UserError as e:
        reason = _reason(e, path)
        raise UserError(f"'{given}' is {reason}" if reason != str(e) else f"'{given}': not a readable checkpoint") from None


def set_aside_damaged(path: Path) -> Path:
    """Rename a damaged checkpoint (and its checksum) out of the way: no longer a checkpoint of the
    run, still there to look at."""
    path = Path(path)
    target = path.with_name(path.name + DAMAGED_SUFFIX)
    os.replace(path, target)
    if checksum_path(path).exists():
        os.replace(checksum_path(path), checksum_path(target))
    return target


def _reason(e: UserError, path: Path) -> str:
    """The middle of a load error: what is wrong with the file, without the advice."""
    text = str(e)
    for lead in (f"'{path}' is damaged: ", f"'{path}' is "):
        if lead in text:
            return text.split(lead, 1)[1].split(";")[0]
    return text


def resume_config_changes(saved: dict, new: dict, path: Path) -> list[str]:
    """The safe changes between a checkpoint's config and a resumed run's, as 'key: old -> new'.

    Raises UserError naming every key that changes the model's shape or the data."""
    old, cur = flatten(saved), flatten(new)
    keys = sorted(set(old) | set(cur))
    changed = [k for k in keys if old.get(k) != cur.get(k) and k != "trainer.resume"]
    fixed = [k for k in changed if (k.startswith("model.") and k.split(".", 1)[1] in FIXED_MODEL_KEYS)
             or (k.startswith("data.") and k.split(".", 1)[1] not in MOVABLE_DATA_KEYS)]
    if "optim.name" in changed:  # the optimizer's state is of another kind
        raise UserError(f"trainer.resume: {path} was trained with optim={old.get('optim.name')}, whose state another "
                        f"optimizer cannot take (optim.name: {old.get('optim.name')} -> {cur.get('optim.name')}); resume "
                        f"with optim={old.get('optim.name')}")
    if fixed:
        diffs = ", ".join(f"{k} ({old.get(k)!r} -> {cur.get(k)!r})" for k in fixed)
        raise UserError(f"trainer.resume: the model shape, data and tokenizer must stay as in {path}, but {diffs}; "
                        "resume with the values it was trained with, or start a new run without trainer.resume")
    return [f"{k}: {old.get(k)!r} -> {cur.get(k)!r}" for k in changed]


def check_resume_step(path: Path, step: int, total: int | None) -> None:
    """A checkpoint at a step past the end of this run (`total` steps; None: not known yet) is
    refused: the one wording of the precheck (minigpt/launch/precheck.py) and the trainer's resume."""
    if total is not None and step > total:
        raise UserError(f"trainer.resume: {path} is at step {step}, past the end of this run ({total} steps); "
                        f"give a run length of at least {step} steps (trainer.max_steps / max_tokens / epochs)")


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
    """Delete all but the newest `keep` checkpoints that have a checksum (never the newest of
    those: called right after a save, that is the one just written and checked), older files
    without one, and the temporary files of saves that a crash interrupted; return the
    checkpoints deleted."""
    found = list_checkpoints(run_dir)
    checked = [p for p in found if checksum_path(p).is_file()]
    kept = checked[-max(1, keep):]
    oldest_kept = checkpoint_step(kept[0]) if kept else None
    doomed = [p for p in found if oldest_kept is not None and checkpoint_step(p) < oldest_kept]
    for p in doomed:
        p.unlink(missing_ok=True)
        checksum_path(p).unlink(missing_ok=True)
    folder = Path(run_dir) / CHECKPOINT_DIR
    for leftover in folder.glob("step_*.pt.tmp"):  # called after a save completed
        leftover.unlink(missing_ok=True)
    for orphan in folder.glob(f"step_*.pt{CHECKSUM_SUFFIX}"):  # a save killed between its two renames
        if not orphan.with_name(orphan.name[: -len(CHECKSUM_SUFFIX)]).exists():
            orphan.unlink(missing_ok=True)
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


def find_resume(run_dir: Path | None, resume: str, config: dict, say,
                mmap: bool = False) -> tuple[Path, dict, list] | None:
    """(path, state, damaged) of the checkpoint that trainer.resume names, after checking its
    config against `config`; None for resume=auto in a folder without one (or none: run_dir None).
    resume=auto takes the newest intact checkpoint, passing over damaged newer ones (`damaged`:
    (path, why)). The one lookup of the trainer's resume and of the precheck (mmap=True: the
    tensors mapped, not read; only the config and the step are looked at); check_resume_step
    then checks the step against the run's length."""
    damaged = []
    if resume == "auto":
        if run_dir is None:
            return None
        path, state, damaged = newest_intact_checkpoint(run_dir, mmap=mmap)
        for p, why in damaged:
            say(f"resume: skipped {p.name}: {why}")
        if path is None:
            return None
    else:
        path = Path(resume)
        state = load_checkpoint(path, mmap=mmap)
    changes = resume_config_changes(state.get("config", {}), config, path)
    if changes:
        say("resume: config changes from the checkpoint: " + "; ".join(changes))
    return path, state, damaged


def check_compatible(state: dict, path: Path, model_config: dict, data_key: str, data_sha256: dict | None = None) -> None:
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
    if state.get("data_sha256") is not None and state["data_sha256"] != data_sha256:
        raise UserError(f"trainer.resume: {path} was trained on other tokens: the token files of cache {data_key} have "
                        "other SHA-256 hashes than those it was trained on (the cache was rebuilt from changed files?); "
                        "resume with the token cache it was trained on")


def is_branch(path: Path, run_dir: Path) -> bool:
    """Whether resuming `run_dir` from checkpoint `path` starts a branch (another run's checkpoint)."""
    return Path(path).resolve().parent.parent != Path(run_dir).resolve()


def continue_records(run_dir: Path, step: int, resumed_from: Path | None, branched_from: Path | None,
                     damaged: list, say) -> None:
    """Make the run folder's records those of this run up to its first step, just before
    training (main rank only): nothing earlier in the start-up can fail after an earlier run's
    records changed.

    A fresh start (or a resume that found no checkpoint) drops the records of an attempt that
    died before its first checkpoint; a resume drops the records after the checkpoint's step
    and the checkpoints past it (a rewind), so every step is recorded once and resume=auto
    never mixes two histories; a branch (e.g. a WSD cooldown off a stable phase) starts from the
    parent's records up to its step. Unreadable lines of metrics.jsonl are set aside, never
    dropped silently; damaged checkpoints are set aside too."""
    run_dir = Path(run_dir)
    for p, _ in damaged:
        aside = set_aside_damaged(p)
        say(f"resume: damaged checkpoint {p.name} set aside as {aside.name}")
    if branched_from:
        parent = [r for r in read_metrics(Path(branched_from).resolve().parent.parent) if r["step"] < step]
        write_metrics(run_dir, parent)
        say(f"branch: from {branched_from} at step {step}, a new run in {run_dir} ({len(parent)} records of the "
            "parent copied)")
        return
    dropped, unreadable = truncate_metrics(run_dir, step)
    later = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) > step]
    for p in later:
        p.unlink()
    notes = []
    if dropped:
        notes.append(f"dropped {dropped} records " + ("of an earlier attempt" if step == 0 else "after it"))
    if unreadable:
        notes.append(f"{unreadable} unreadable line{'s' if unreadable > 1 else ''} of metrics.jsonl set aside in "
                     f"{run_dir / UNREADABLE_FILE}")
    if later:
        notes.append(f"deleted {len(later)} later checkpoints")
    if resumed_from:
        say(f"resume: from {resumed_from} at step {step}" + "".join(f"; {n}" for n in notes))
    elif notes:
        say("records: " + "; ".join(notes))
