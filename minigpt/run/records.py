"""Per-step records: from the device to the host in batches, and the one record schema.

The keys a record can have are named in keys.py (`Key`); `RecordSchema` turns a step's values
into them, `Evaluation.fields` an evaluation's.

On a GPU nothing in the step waits for the device: a step leaves its values (loss, grad norm,
...) on the GPU as one small tensor with its host-side facts (LR, tokens, timing). Every
`trainer.flush_every` steps the pending values are copied to pinned host memory without
blocking; a later flush turns the copies that have landed into records. On the CPU every copy
has landed at once.

What the queue needs from the GPU (events that time a step, an asynchronous copy to the host
and an event that says it landed) is one object, `CudaEvents`; a test hands StepRecords a
stand-in with the same methods, so the CUDA branch runs on a CPU (tests/test_gpu_paths.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from minigpt.config import Config
from minigpt.run.keys import Key
from minigpt.run.sharpness import stability_threshold

# Values every step produces, in this order; optional ones (monitor.*) follow when enabled.
BASE_FIELDS = ("loss", "loss_max", "grad_norm")


@dataclass
class Evaluation:
    """One evaluation of a run on the fixed validation windows: what its record holds."""

    loss: float  # the mean cross-entropy (the z-loss term apart)
    stderr: float | None = None  # its standard error over the batches (None for a single batch)
    z_loss: float | None = None  # the z-loss term, when the z-loss is on
    ema_loss: float | None = None  # the weight average's loss (optim.ema)

    def fields(self) -> dict:
        """The evaluation's keys of a record (val/*), those it has."""
        out = {Key.VAL_LOSS: self.loss}
        for key, value in ((Key.VAL_LOSS_STDERR, self.stderr), (Key.VAL_Z_LOSS, self.z_loss),
                           (Key.VAL_LOSS_EMA, self.ema_loss)):
            if value is not None:
                out[key] = value
        return out


@dataclass
class PendingStep:
    """Host-side facts of a step whose device values have not reached the host yet."""

    step: int
    lr: float
    beta1: float | None
    tokens: int  # tokens seen after the step
    batch_size: int  # global sequences of the step
    skipped: bool
    seconds: float | None  # host-measured duration; None on CUDA, where the events below time it
    events: tuple | None  # (start, end) CUDA events around the step's work


class CudaEvents:
    """The CUDA side of the records: timing events around a step, the copy to pinned host
    memory and the event that marks it done. A stand-in (tests) has the same three methods."""

    def timing(self) -> tuple:
        """(start, end) events; the stepper records start before the step's work, end after."""
        return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def to_host(self, values: torch.Tensor) -> torch.Tensor:
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        return host.copy_(values, non_blocking=True)

    def copy_done(self):
        """An event recorded after the copy: query() says whether it landed, without waiting."""
        done = torch.cuda.Event()
        done.record()
        return done


@dataclass
class _Inflight:
    steps: list[PendingStep]
    values: torch.Tensor  # (n_steps, n_fields), on the host once `done` has completed
    done: object  # a CUDA event, or None on the CPU


@dataclass
class RecordSchema:
    """What a record holds beyond its values: the facts to turn a step into train/* and perf/* keys."""

    fields: list[str]  # the names of a step's device values, in order
    block_size: int
    grad_clip: float
    beta1: float  # optim.beta1, where the schedule sets none
    skip_spikes: bool
    flops_per_token: float
    peak_flops: float | None  # of all ranks together; None: no MFU
    sharpness_every: int | None = None  # steps between sharpness measurements (monitor.sharpness_every) ...
    sharpness_until: int | None = None  # ... before this step (monitor.sharpness_until; None: to the end)
    constants: dict = field(default_factory=dict)  # keys every record carries (Adam's betas and eps under sqrt_adam)

    @classmethod
    def of_run(cls, cfg: Config, loss_scaling: bool, flops_per_token: float, peak_flops: float | None,
               constants: dict) -> "RecordSchema":
        fields = list(BASE_FIELDS) + (["scaler_skipped"] if loss_scaling else [])
        fields += ["z_loss"] if cfg.model.z_loss > 0 else []
        fields += [name for name in ("update_ratio", "max_attn_logit", "logz") if getattr(cfg.monitor, name)]
        fields += ["sharpness"] if cfg.monitor.sharpness_every else []
        return cls(fields, cfg.model.block_size, cfg.optim.grad_clip, cfg.optim.beta1, cfg.monitor.skip_spikes,
                   flops_per_token, peak_flops, cfg.monitor.sharpness_every, cfg.monitor.sharpness_until, constants)

    def record(self, p: PendingStep, row: list[float]) -> dict:
        values = dict(zip(self.fields, row))
        # The events are read only here, once the copy recorded after them has landed: an
        # elapsed_time() of an event still in flight would wait for it (or raise).
        seconds = p.seconds if p.events is None else p.events[0].elapsed_time(p.events[1]) / 1000
        tok_per_s = p.batch_size * self.block_size / max(seconds, 1e-9)
        record = {
            Key.STEP: p.step,
            Key.LR: p.lr,
            Key.LOSS: values["loss"],
            Key.LOSS_MAX: values["loss_max"],
            Key.GRAD_NORM: values["grad_norm"],
            Key.CLIPPED: bool(self.grad_clip > 0 and values["grad_norm"] > self.grad_clip),
            Key.TOKENS: p.tokens,
            Key.BATCH_SIZE: p.batch_size,
            Key.STEP_MS: round(seconds * 1000, 3),
            Key.TOK_PER_S: round(tok_per_s, 1),
        }
        if self.peak_flops:
            record[Key.MFU] = round(self.flops_per_token * tok_per_s / self.peak_flops, 4)
        if p.beta1 is not None:
            record[Key.BETA1] = p.beta1
        record.update(self.constants)
        if self.skip_spikes:
            record[Key.SKIPPED] = p.skipped
        if "scaler_skipped" in values:
            record[Key.SCALER_SKIPPED] = bool(values["scaler_skipped"])
        for name in ("z_loss", "update_ratio", "max_attn_logit", "logz"):
            if name in values:
                record[Key.train(name)] = values[name]
        if self.sharpness_every and p.step % self.sharpness_every == 0 and (
                self.sharpness_until is None or p.step < self.sharpness_until):
            record[Key.SHARPNESS] = values["sharpness"]
            record[Key.SHARPNESS_THRESHOLD] = stability_threshold(p.lr, p.beta1 if p.beta1 is not None else self.beta1)
        return record


class StepRecords:
    """The queue of one run's steps on their way to the host."""

    def __init__(self, schema: RecordSchema, device: torch.device, events=None):
        self.schema, self.device = schema, device
        # The device's events and asynchronous copy: CUDA's, none on the CPU, or a test's stand-in.
        self.events = events if events is not None else (CudaEvents() if device.type == "cuda" else None)
        self.pending: list[PendingStep] = []
        self.pending_values: list[torch.Tensor] = []
        self.inflight: list[_Inflight] = []

    @property
    def fields(self) -> list[str]:
        return self.schema.fields

    def timing(self) -> tuple | None:
        """(start, end) events to time a step on the device, the start recorded; None: time it on the host."""
        if self.events is None:
            return None
        events = self.events.timing()
        events[0].record()
        return events

    def add(self, step: PendingStep, values: torch.Tensor) -> None:
        """A step's facts and its values (a 1-d tensor in `fields` order, on the device)."""
        self.pending.append(step)
        self.pending_values.append(values)

    def discard(self) -> None:
        """Forget the pending steps (a benchmark of the step without its records)."""
        self.pending, self.pending_values = [], []

    def flush(self, wait: bool) -> list[dict]:
        """Start copying the pending values to the host; return the records whose copy landed
        (all of them when `wait`)."""
        if self.pending:
            values = torch.stack(self.pending_values)
            if self.events is not None:
                host = self.events.to_host(values)
                self.inflight.append(_Inflight(self.pending, host, self.events.copy_done()))
            else:
                self.inflight.append(_Inflight(self.pending, values, None))
            self.discard()
        out = []
        while self.inflight and (wait or self.inflight[0].done is None or self.inflight[0].done.query()):
            item = self.inflight.pop(0)
            if item.done is not None:
                item.done.synchronize()
            out += [self.schema.record(p, row) for p, row in zip(item.steps, item.values.tolist())]
        return out
