"""Loss-spike and divergence detection over the per-step records.

Runs on the host, on values the trainer has already copied off the device, so it never makes
the GPU wait. Its whole state is a few windows and counters, saved in checkpoints, so a
resumed run flags exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from minigpt.config import MonitorConfig
from minigpt.run.keys import Key


class RollingZ:
    """z-score of each new value against the mean and standard deviation of the previous
    `window` finite values. The value is added to the window after it is scored."""

    def __init__(self, window: int, min_values: int):
        self.values: deque[float] = deque(maxlen=window)
        self.min_values = min_values

    def score(self, x: float) -> float | None:
        """z of x against the window, or None while the window is too short (or x not finite)."""
        if len(self.values) < self.min_values or not math.isfinite(x):
            return None
        window = np.fromiter(self.values, dtype=np.float64)
        std = window.std()
        if std == 0:  # a constant series: any change at all is infinitely unlikely
            return 0.0 if x == window[0] else math.copysign(math.inf, x - window[0])
        return float((x - window.mean()) / std)

    def push(self, x: float) -> None:
        if math.isfinite(x):
            self.values.append(x)

    def state_dict(self) -> dict:
        return {"values": list(self.values)}

    def load_state_dict(self, state: dict) -> None:
        self.values.clear()
        self.values.extend(state["values"])


@dataclass
class Verdict:
    diverged: bool = False
    reason: str = ""
    step: int | None = None


PATIENCE_FRACTION = 0.1  # the loss-limit rule waits at most this share of the run ...
PATIENCE_FLOOR = 5  # ... but never fewer steps than this (a loss above its start is normal for a step or two)

class Monitor:
    """Flags spikes of the loss and the gradient norm, counts them, and decides divergence.

    spike: value > mean + k * std of the previous W values (one-sided: a sudden drop in loss
    is good news). spike score (OLMo 2): share of steps whose value lies at least k' standard
    deviations from the mean of the previous W' values, in percent.
    """

    SERIES = ("loss", "grad_norm")

    def __init__(self, cfg: MonitorConfig, total_steps: int, unigram_entropy: float | None = None):
        self.cfg, self.total_steps, self.unigram_entropy = cfg, total_steps, unigram_entropy
        self.detectors = {s: RollingZ(cfg.spike_window, cfg.spike_min_values) for s in self.SERIES}
        self.score_windows = {s: RollingZ(cfg.spike_score_window, cfg.spike_min_values) for s in self.SERIES}
        self.spikes = {s: 0 for s in self.SERIES}
        self.score_hits = {s: 0 for s in self.SERIES}
        self.scored_steps = {s: 0 for s in self.SERIES}
        self.steps_seen = 0
        self.skipped_steps = 0  # updates skipped by the mitigation
        self.scaler_skipped_steps = 0  # updates the fp16 gradient scaler skipped (inf/nan grads)
        self.initial_loss: float | None = None
        self.above_limit = 0  # consecutive steps with the loss above the limit
        self.recent_losses: deque[float] = deque(maxlen=20)
        # The 20-step mean loss of each of the last stuck_window + 1 steps: the stuck rule compares
        # the newest with the oldest, i.e. asks whether the run improved over the window.
        self.smoothed_losses: deque[float] = deque(maxlen=cfg.stuck_window + 1)
        self.verdict = Verdict()
        # The loss-limit rule's patience, scaled to the run: monitor.patience steps, but at most a
        # tenth of the run (at least PATIENCE_FLOOR steps), so that a run shorter than the
        # configured patience cannot blow up and still end "completed" (a 41-step run at loss 7e7).
        self.patience = min(cfg.patience, max(PATIENCE_FLOOR, math.ceil(PATIENCE_FRACTION * total_steps)))

    def patience_note(self) -> str | None:
        """A line for the log when the run's length shortened monitor.patience, else None."""
        if self.patience == self.cfg.patience:
            return None
        return (f"monitor: divergence patience {self.patience} steps for this {self.total_steps}-step run "
                f"(monitor.patience={self.cfg.patience} is capped at a tenth of the run, at least {PATIENCE_FLOOR})")

    # --- per step ---

    def should_skip(self, loss: float, grad_norm: float) -> bool:
        """Mitigation: is this update an extreme spike that should not be applied?"""
        if not self.cfg.skip_spikes:
            return False
        for name, x in (("loss", loss), ("grad_norm", grad_norm)):
            z = self.detectors[name].score(x)
            if not math.isfinite(x) or (z is not None and z > self.cfg.skip_k):
                return True
        return False

    def observe(self, record: dict) -> dict:
        """Score one step's record and update the divergence verdict; return the spike fields
        (spike/*, train/spike) for the record, which is left as it was."""
        step, loss = record[Key.STEP], record[Key.LOSS]
        self.steps_seen += 1
        if record.get(Key.SKIPPED):
            self.skipped_steps += 1
        if record.get(Key.SCALER_SKIPPED):
            self.scaler_skipped_steps += 1
        values = {"loss": loss, "grad_norm": record.get(Key.GRAD_NORM, math.nan)}
        fields, any_spike = {}, False
        for name, x in values.items():
            z = self.detectors[name].score(x)
            spike = z is not None and z > self.cfg.spike_k
            fields[Key.spike(name) + "_z"] = round(z, 4) if z is not None and math.isfinite(z) else z
            fields[Key.spike(name)] = spike
            self.spikes[name] += spike
            any_spike |= spike
            self.detectors[name].push(x)
            z_score = self.score_windows[name].score(x)
            if z_score is not None:
                self.scored_steps[name] += 1
                self.score_hits[name] += abs(z_score) >= self.cfg.spike_score_k
            self.score_windows[name].push(x)
        fields[Key.SPIKE] = any_spike
        self._update_divergence(step, loss)
        return fields

    def _update_divergence(self, step: int, loss: float) -> None:
        if self.verdict.diverged:
            return
        if not math.isfinite(loss):
            self.verdict = Verdict(True, f"non-finite loss ({loss}) at step {step}", step)
            return
        if self.initial_loss is None:
            self.initial_loss = loss
        limit = self.cfg.loss_limit if self.cfg.loss_limit is not None else self.initial_loss
        self.above_limit = self.above_limit + 1 if loss > limit else 0
        if self.above_limit >= self.patience:
            self.verdict = Verdict(
                True, f"loss above {limit:.4g} for {self.patience} consecutive steps (up to step {step})", step
            )
            return
        self.recent_losses.append(loss)
        if len(self.recent_losses) < self.recent_losses.maxlen:
            return
        mean = sum(self.recent_losses) / len(self.recent_losses)
        self.smoothed_losses.append(mean)
        # Stuck: a run that stopped learning at (or above) the loss of a model that knows only token
        # frequencies. An early run is still there too, but it is falling: the rule asks for no
        # real improvement over the last stuck_window steps, not for a low loss by some step.
        cfg = self.cfg
        if (cfg.stuck_after == 0 or cfg.stuck_window == 0 or self.unigram_entropy is None
                or step < cfg.stuck_after * self.total_steps
                or len(self.smoothed_losses) < self.smoothed_losses.maxlen):
            return
        drop = self.smoothed_losses[0] - mean
        if mean >= self.unigram_entropy - cfg.stuck_margin and drop < cfg.stuck_min_drop:
            self.verdict = Verdict(
                True,
                f"loss stuck at the unigram level: mean {mean:.3f} over the last {len(self.recent_losses)} steps "
                f"vs unigram entropy {self.unigram_entropy:.3f}, down only {drop:.3f} nats over the last "
                f"{cfg.stuck_window} steps (less than monitor.stuck_min_drop={cfg.stuck_min_drop:g}) at step {step}",
                step,
            )

    # --- summaries and state ---

    def summary(self) -> dict:
        out = {
            "spikes/loss": self.spikes["loss"],
            "spikes/grad_norm": self.spikes["grad_norm"],
            "skipped_steps": self.skipped_steps,
            "scaler_skipped_steps": self.scaler_skipped_steps,
        }
        for name in self.SERIES:
            n = self.scored_steps[name]
            out[f"spike_score/{name}"] = round(100.0 * self.score_hits[name] / n, 4) if n else 0.0
        return out

    def state_dict(self) -> dict:
        return {
            "detectors": {k: d.state_dict() for k, d in self.detectors.items()},
            "score_windows": {k: d.state_dict() for k, d in self.score_windows.items()},
            "spikes": dict(self.spikes),
            "score_hits": dict(self.score_hits),
            "scored_steps": dict(self.scored_steps),
            "steps_seen": self.steps_seen,
            "skipped_steps": self.skipped_steps,
            "scaler_skipped_steps": self.scaler_skipped_steps,
            "initial_loss": self.initial_loss,
            "above_limit": self.above_limit,
            "recent_losses": list(self.recent_losses),
            "smoothed_losses": list(self.smoothed_losses),
        }

    def load_state_dict(self, state: dict) -> None:
        for k, d in self.detectors.items():
            d.load_state_dict(state["detectors"][k])
        for k, d in self.score_windows.items():
            d.load_state_dict(state["score_windows"][k])
        self.spikes = dict(state["spikes"])
        self.score_hits = dict(state["score_hits"])
        self.scored_steps = dict(state["scored_steps"])
        self.steps_seen = state["steps_seen"]
        self.skipped_steps = state["skipped_steps"]
        self.scaler_skipped_steps = state["scaler_skipped_steps"]
        self.initial_loss = state["initial_loss"]
        self.above_limit = state["above_limit"]
        self.recent_losses.clear()
        self.recent_losses.extend(state["recent_losses"])
        self.smoothed_losses.clear()
        self.smoothed_losses.extend(state.get("smoothed_losses", []))  # absent from older checkpoints
