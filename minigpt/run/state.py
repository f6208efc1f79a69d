"""What a stepper is handed of a run: its progress and the parts an update uses, typed.

A stepper (stepper.py for one model, stack.py for a stack) works on `StepParts`, never on the
Trainer's attributes: `Trainer.step_parts()` builds it from the run's current parts, and its
`progress` is the run's own object, so the steps a stepper takes are the run's. What a
checkpoint holds is `Trainer.state_dict()`; what summary.json holds is `Trainer.summary()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: nothing here runs at import
    import torch

    from minigpt.config import Config
    from minigpt.data.cache import Batches
    from minigpt.model import GPT, GPTConfig
    from minigpt.optim import WeightAverage
    from minigpt.plan import RunPlan
    from minigpt.run.monitor import Monitor
    from minigpt.run.records import StepRecords
    from minigpt.run.runtime import Runtime
    from minigpt.run.sharpness import SharpnessProbe


@dataclass
class Progress:
    """Where a run stands, at the boundary before its next update; a checkpoint saves it."""

    step: int = 0  # updates done
    tokens: int = 0  # training tokens seen
    second_moment_pending: bool = False  # GI-Adam (optim.adam_init=grad): v_0 is set at the next update


@dataclass
class StepParts:
    """One run's parts that an update uses; `progress` is shared with the run."""

    cfg: Config
    progress: Progress
    plan: RunPlan
    model: GPT  # the uncompiled module (parameters, gradient clipping, checkpoints)
    step_model: torch.nn.Module  # what the forward and backward go through (compiled, DDP-wrapped)
    model_config: GPTConfig
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 only
    ema: WeightAverage | None  # optim.ema
    train_batches: Batches
    val_batches: Batches
    runtime: Runtime
    records: StepRecords
    monitor: Monitor
    sharpness: SharpnessProbe | None  # monitor.sharpness_every
