"""Per-step records to metrics.jsonl (always), wandb (when asked) and a tqdm bar.

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

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


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
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:  # a line cut short by a crash: everything before it stands
            break
    return records


def truncate_metrics(run_dir: Path, step: int) -> int:
    """Keep only records of steps before `step`; return how many were dropped."""
    records = read_metrics(run_dir)
    kept = [r for r in records if r.get("step", -1) < step]
    write_metrics(run_dir, kept)
    return len(records) - len(kept)


def write_metrics(run_dir: Path, records: list[dict]) -> None:
    """Replace metrics.jsonl with these records (atomically)."""
    write_atomic(Path(run_dir) / METRICS_FILE, "".join(_dumps(r) + "\n" for r in records))


def write_atomic(path: Path, text: str) -> None:
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_summary(run_dir: Path, summary: dict) -> None:
    write_atomic(Path(run_dir) / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n")


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
        if not enabled:
            return
        settings = wandb_settings(cfg, self.run_dir, run_name) if cfg.wandb else None
        self.file = open(self.run_dir / METRICS_FILE, "a")
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

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(_dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        if self.bar is not None and "train/loss" in record:
            self.bar.n = record["step"] + 1
            postfix = {"loss": f"{record['train/loss']:.4f}", "lr": f"{record['train/lr']:.3g}"}
            if "val/loss" in record:
                postfix["val"] = f"{record['val/loss']:.4f}"
            if record.get("train/spike"):
                postfix["spike"] = "!"
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.refresh()

    def flush(self) -> None:
        if self.enabled:
            self.file.flush()

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
        if not self.file.closed:
            self.file.close()
        if self.wandb is not None:
            if summary:
                for k, v in summary.items():
                    if isinstance(v, (int, float, str, bool)) and not (isinstance(v, float) and math.isnan(v)):
                        self.wandb.summary[k] = v
            self.wandb.finish(exit_code=1 if failed else 0)
            self.wandb = None
