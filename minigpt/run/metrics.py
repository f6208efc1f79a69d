"""Per-step records to metrics.jsonl (always), wandb and TensorBoard (when asked) and a tqdm bar.

Every record is a flat dict carrying its `step`; the same keys go to every sink. After a
resume, records from the checkpoint's step on are dropped from metrics.jsonl before training
continues, so each step appears exactly once.
"""

from __future__ import annotations

import enum
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from minigpt.config import LoggerConfig
from minigpt.errors import UserError
from minigpt.files import open_append, refuse_link, write_atomic
from minigpt.run.keys import Key

METRICS_FILE = "metrics.jsonl"
UNREADABLE_FILE = "metrics.jsonl.unreadable"  # lines of metrics.jsonl that a resume could not read
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"  # logger.tensorboard: the event files, inside the run folder
# The format of a run's files: summary.json's and each checkpoint's `format_version` (the
# summary's stands for the run folder's files: metrics.jsonl, summary.json, checkpoints/).
# Raise it when a key changes its meaning or a reader would need to tell the files apart; keep
# the readers able to read every earlier version. Files written before it existed carry none and
# read as version 0: the same layout as version 1 (tests/test_old_runs.py keeps one, committed).
FORMAT_VERSION = 1


def check_format(found, what: str) -> None:
    """Refuse a file written by a newer minigpt (its format_version above ours) with one line;
    `found` None (no version: written before versions) is version 0."""
    version = 0 if found is None else found
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{what} has format_version {found!r}, newer than this minigpt reads (up to "
                        f"{FORMAT_VERSION}); open it with the minigpt that wrote it, or update this one")


class RunStatus(enum.StrEnum):
    """How a run ended: summary.json's "status" (a string in the file, this enum in the code)."""

    COMPLETED = "completed"
    DIVERGED = "diverged"  # the monitor's verdict (monitor.stop_on_divergence)
    INTERRUPTED = "interrupted"  # a stop signal; it saved a checkpoint to resume from
    STOPPED = "stopped"  # a watcher ended it (the LR range test)
    FAILED = "failed"  # an exception, or bad input inside a sweep


@dataclass
class RunResult:
    status: RunStatus
    final_val_loss: float  # inf unless completed
    summary: dict  # as in summary.json
    run_dir: Path
    checkpoint: Path | None = None  # the checkpoint to resume or sample from


def read_metrics(run_dir: Path) -> list[dict]:
    """Every readable record of metrics.jsonl (see read_metrics_lines)."""
    return read_metrics_lines(run_dir)[0]


def read_metrics_lines(run_dir: Path) -> tuple[list[dict], list[str]]:
    """(records, unreadable lines) of metrics.jsonl.

    A record is a JSON object with an integer `step`. Anything else (a line cut short by a
    kill, a line garbled by a disk or by a second writer, `null`) is unreadable: it is returned
    apart and never hides the records after it. Blank lines are skipped."""
    path = Path(run_dir) / METRICS_FILE
    refuse_link(path)  # the run's own file: a link would read (and set aside) another file's lines
    if not path.exists():
        return [], []
    records, unreadable = [], []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int) and not isinstance(record["step"], bool):
            records.append(record)
        else:
            unreadable.append(line)
    return records, unreadable


def truncate_metrics(run_dir: Path, step: int) -> tuple[int, int]:
    """Keep only the records of steps 0..step-1, each step once, in step order; return (records
    dropped, lines set aside).

    A step recorded more than once (a file minigpt did not write alone: an appended copy, a
    second writer) keeps its last record, the newest write; records of negative steps go. So
    "every step appears exactly once" holds whatever the file held. Unreadable lines are not
    dropped silently: they are appended to metrics.jsonl.unreadable (UNREADABLE_FILE) in the run
    folder, for a person to look at."""
    records, unreadable = read_metrics_lines(run_dir)
    last = {r["step"]: r for r in records if 0 <= r["step"] < step}
    kept = [last[s] for s in sorted(last)]
    if unreadable:
        with open_append(Path(run_dir) / UNREADABLE_FILE) as f:
            f.write("".join(line + "\n" for line in unreadable))
            f.flush()
            os.fsync(f.fileno())
    if unreadable or kept != records:
        write_metrics(run_dir, kept)
    return len(records) - len(kept), len(unreadable)


def write_metrics(run_dir: Path, records: list[dict]) -> None:
    """Replace metrics.jsonl with these records (atomically and durably)."""
    write_atomic(Path(run_dir) / METRICS_FILE, "".join(_dumps(r) + "\n" for r in records))


def write_summary(run_dir: Path, summary: dict) -> None:
    """summary.json, with the format_version of the files it was written with first."""
    versioned = {"format_version": FORMAT_VERSION, **{k: v for k, v in summary.items() if k != "format_version"}}
    write_atomic(Path(run_dir) / SUMMARY_FILE, json.dumps(versioned, indent=2, default=str) + "\n")


def completed_summary(run_dir: Path, step: int) -> dict | None:
    """The folder's summary when it is of a run completed at `step` (a resume would only repeat it), else None."""
    try:
        summary = json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    done = isinstance(summary, dict) and summary.get("status") == "completed" and summary.get("step") == step
    return summary if done else None


def write_failed_summary(run_dir: Path, summary: dict) -> bool:
    """Record a failure in summary.json, unless the folder's summary is of a completed run: a
    failure before training started (a refused resume, a crash in the start-up) must not turn a
    finished run into a failed one. Return whether it was written."""
    try:
        earlier = json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        earlier = {}
    if isinstance(earlier, dict) and earlier.get("status") == "completed":
        return False
    write_summary(run_dir, {**(earlier if isinstance(earlier, dict) else {}), **summary})
    return True


def _dumps(record: dict) -> str:
    # NaN and inf are legal in Python's JSON dialect and are kept: a NaN loss is the news.
    return json.dumps(record, default=float)


WANDB_MODES = {"online": "online", "offline": "offline", "disabled": "disabled", "run": "online", "dryrun": "offline"}


def wandb_settings(cfg: LoggerConfig, run_dir: Path, run_name: str, env=None) -> dict:
    """The arguments of wandb.init: a key set in the config (or on the command line) wins; an unset
    one takes wandb's environment variable when it is set, else our default (offline, project
    minigpt, wandb/ in the run directory). wandb.init would let its own arguments beat the
    environment, so the choice is made here."""
    env = os.environ if env is None else env
    mode = cfg.mode
    if mode is None and env.get("WANDB_MODE"):
        mode = WANDB_MODES.get(env["WANDB_MODE"])
        if mode is None:
            raise UserError(f"WANDB_MODE={env['WANDB_MODE']!r} is not a wandb mode; accepted: {', '.join(WANDB_MODES)} "
                            "(or set logger.mode, which wins over the environment)")
    tags = cfg.tags
    if tags is None:
        tags = [t.strip() for t in env.get("WANDB_TAGS", "").split(",") if t.strip()]
    return {
        "project": cfg.project or env.get("WANDB_PROJECT") or "minigpt",
        "entity": cfg.entity or env.get("WANDB_ENTITY") or None,
        "group": cfg.group or env.get("WANDB_RUN_GROUP") or None,
        "tags": list(tags),
        "mode": mode or "offline",
        "dir": str(cfg.dir or env.get("WANDB_DIR") or run_dir),
        "name": run_name,
    }


def check_tensorboard() -> None:
    """logger.tensorboard=true needs the tensorboard package (torch's SummaryWriter imports it)."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UserError("logger=tensorboard needs the tensorboard package: pip install tensorboard "
                        "(or pip install -e '.[tensorboard]')") from None


def _scalars(record: dict) -> dict:
    """The record's numbers (booleans as 0/1), without its step: what TensorBoard plots."""
    return {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float))}


class TensorBoardSink:
    """The records as TensorBoard scalars in <run dir>/tensorboard/, one tag per key, at the record's step.

    Kept equal to metrics.jsonl across restarts: a resumed run's writer starts with TensorBoard's
    purge marker at its first step (readers drop what an earlier session wrote from there on, as
    metrics.jsonl was cut there), and a folder without event files yet (a branch, or TensorBoard
    turned on mid-run) first gets the records metrics.jsonl already holds."""

    def __init__(self, run_dir: Path, start_step: int):
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(run_dir) / TENSORBOARD_DIR
        had_events = folder.is_dir() and any(folder.glob("events.out.tfevents.*"))
        if start_step == 0 and had_events:  # a fresh start: the events of an earlier attempt go
            for old in folder.glob("events.out.tfevents.*"):
                old.unlink()
            had_events = False
        self.writer = SummaryWriter(str(folder), purge_step=start_step if had_events else None)
        if not had_events:
            for record in read_metrics(run_dir):
                if record["step"] < start_step:
                    self.log(record)

    def log(self, record: dict) -> None:
        for key, value in _scalars(record).items():
            self.writer.add_scalar(key, value, global_step=record["step"])

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MetricsLogger:
    """Writes records; `enabled=False` (non-zero ranks) makes every call a no-op."""

    def __init__(self, run_dir: Path, cfg: LoggerConfig, *, config: dict, total_steps: int, start_step: int = 0,
                 wandb_id: str | None = None, progress: bool = True, enabled: bool = True, run_name: str = "run",
                 shared_process: bool = False):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.wandb = None
        self.wandb_id = wandb_id
        self.bar = None
        self.log_redirect = None  # console log lines through tqdm.write while the bar is up
        self.tensorboard = None
        if not enabled:
            return
        settings = wandb_settings(cfg, self.run_dir, run_name) if cfg.wandb else None
        if cfg.tensorboard:  # before metrics.jsonl is opened: it may copy the records that file already holds
            self.tensorboard = TensorBoardSink(self.run_dir, start_step)
        self.file = open_append(self.run_dir / METRICS_FILE)  # never through a link (minigpt/files.py)
        if settings and settings["mode"] != "disabled":
            import wandb

            Path(settings["dir"]).mkdir(parents=True, exist_ok=True)
            self.wandb = wandb.init(
                **settings, config=config, id=wandb_id,
                resume="allow" if wandb_id else None,
                # Several runs open at once in one process (stacked runs): each its own wandb run.
                **({"reinit": "create_new"} if shared_process else {}),
            )
            self.wandb_id = self.wandb.id
        if progress:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
            # While the bar is up, log lines to the console (checkpoint, evaluation, ...) go above it
            # through tqdm.write instead of sharing its line.
            self.log_redirect = logging_redirect_tqdm()
            self.log_redirect.__enter__()

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(_dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        if self.tensorboard is not None:
            self.tensorboard.log(record)
        if self.bar is not None and Key.LOSS in record:
            self.bar.n = record["step"] + 1
            postfix = {"loss": f"{record['train/loss']:.4f}", "lr": f"{record['train/lr']:.3g}"}
            if Key.VAL_LOSS in record:
                postfix["val"] = f"{record['val/loss']:.4f}"
            if record.get(Key.SPIKE):
                postfix["spike"] = "!"
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.refresh()

    def flush(self) -> None:
        if self.enabled:
            self.file.flush()
            if self.tensorboard is not None:
                self.tensorboard.flush()

    def sync(self) -> None:
        """Put the records written so far on the disk (called before each checkpoint is saved,
        so a checkpoint never refers to steps whose records a power cut could lose)."""
        if self.enabled and not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())

    def message(self, text: str) -> None:
        """Print a line without tearing the progress bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self, summary: dict | None = None, failed: bool = False) -> None:
        """Close every sink; called in `finally`, so a failed run still closes its wandb run."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.log_redirect is not None:
            self.log_redirect.__exit__(None, None, None)
            self.log_redirect = None
        if not self.file.closed:
            self.sync()
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb is not None:
            if summary:
                for k, v in summary.items():
                    if isinstance(v, (int, float, str, bool)) and not (isinstance(v, float) and math.isnan(v)):
                        self.wandb.summary[k] = v
            self.wandb.finish(exit_code=1 if failed else 0)
            self.wandb = None
