"""The scheduler registry: every learning-rate schedule as a pure function of the optimizer step.

The trainer applies ``lr = peak_lr * f(step)``, where ``step`` is the number of optimizer updates
already done (the update in progress uses ``f(step)``) and ``f`` is a *multiplier* of the peak LR.
A schedule holds no state: resuming recomputes the LR from the step, so a resumed run cannot drift.

Registering a schedule is one pure function plus a frozen dataclass of its parameters::

    @dataclass(frozen=True)
    class HalvingParams:
        every: int = length_field(0.25)     # a length: steps, fraction, "5%", "2M tokens"

        def validate(self, total_steps):    # optional; raise UserError with one line
            check_range(self, "every", 1, total_steps, hi_label="total_steps")

    @register_schedule("halving", HalvingParams)
    def halving(step, total_steps, p):
        return 0.5 ** math.floor(step / p.every)

Conventions (docs/schedules.md has the table): warmups and decays are ramps sampled on the steps
of their phase, and ``warmup_convention`` / ``decay_convention`` say which end of a ramp lands on
a step. The project default, ``skip_start`` for both, never spends an update at LR 0 (step 0 of a
warmup of W steps is at 1/W of the way up, the peak is reached at step W-1) and reaches the
floor on the last step of the run (T-1). The other values reproduce HF, torch, DeepSpeed, timm
and nanoGPT exactly.
"""

import bisect
import contextlib
import dataclasses
import difflib
import importlib
import itertools
import math
import numbers
import os
import re
import sys
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from minigpt.config import coerce
from minigpt.errors import UserError

__all__ = [
    "Schedule",
    "build_schedule",
    "check_choice",
    "check_curve",
    "check_range",
    "length_field",
    "list_schedules",
    "register_schedule",
    "schedule_from_config",
    "to_steps",
]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    fn: Callable[[float, int, Any], float]
    params: type
    beta1: Callable[[float, int, Any], "float | None"] | None


_REGISTRY: dict[str, _Entry] = {}


def register_schedule(name: str, params: type, *, beta1: Callable | None = None):
    """Decorator: register ``fn(step, total_steps, params) -> multiplier`` under ``name``.

    ``params`` is a dataclass of the schedule's parameters (defaults, optional ``validate(total_steps)``
    raising UserError, optional ``phases(total_steps) -> {label: first_step}``). ``beta1``, when given,
    is a pure function of the same arguments returning Adam's beta1 for the step (or None).
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"schedule names are snake_case identifiers, got {name!r}")
    if not (isinstance(params, type) and dataclasses.is_dataclass(params)):
        raise TypeError(f"register_schedule({name!r}): params must be a dataclass type, got {params!r}")
    reserved = {"name", "module", "conventions"} & {f.name for f in dataclasses.fields(params)}
    if reserved:
        raise ValueError(f"register_schedule({name!r}): {sorted(reserved)} are config keys, not parameters")

    def decorator(fn):
        old = _REGISTRY.get(name)
        # Re-importing the module that registered a name (e.g. importlib.reload) is fine;
        # two different functions under one name is a bug.
        if old is not None and _qualname(old.fn) != _qualname(fn):
            raise ValueError(f"schedule {name!r} is already registered by {_qualname(old.fn)}")
        _REGISTRY[name] = _Entry(fn, params, beta1)
        return fn

    return decorator


def _qualname(fn) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def list_schedules() -> list[str]:
    """The registered schedule names, sorted."""
    return sorted(_REGISTRY)


def schedule_params(name: str) -> type:
    """The parameter dataclass of the registered schedule `name` (UserError for an unknown name)."""
    return _lookup(name).params


@contextlib.contextmanager
def registry_scope():
    """Schedules registered inside the block are forgotten when it ends, and the registry is as it
    was before: for tests, and for tools that import someone's schedule module for a while."""
    saved = dict(_REGISTRY)
    try:
        yield
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(saved)


def _lookup(name: Any, hint: str = "") -> _Entry:
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    names = list_schedules()
    closest = difflib.get_close_matches(str(name), names, n=1, cutoff=0.0)
    suggestion = f" (closest match: '{closest[0]}')" if closest else ""
    raise UserError(f"unknown scheduler {name!r}{suggestion}; valid names: {', '.join(names)}{hint}")


# --------------------------------------------------------------------------------------------
# Lengths: steps, fractions of the run, percentages, tokens
# --------------------------------------------------------------------------------------------


def length_field(default: Any):
    """A dataclass field that holds a length (warmup, decay, period, ...).

    Before a schedule is built, its value is converted to whole steps by `to_steps`, so the
    dataclass default may be a fraction of the run (0.05) and the built params always hold ints.
    Works for ``int``, ``int | None`` and ``tuple[int, ...]`` fields.
    """
    return field(default=default, metadata={"length": True})


_LENGTH_FORMS = (
    "accepted: an int (steps, e.g. 300), a float in [0, 1] (fraction of the run, e.g. 0.05), "
    "or a string: '5%', '300', '300 steps', '2M tokens', '500k tokens', '1e6 tokens'"
)
_LENGTH_RE = re.compile(r"\s*([0-9._eE+-]+?)\s*([kmbg]?)\s*(%|steps?|tokens?)?\s*", re.IGNORECASE)
_MAGNITUDE = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}


def _round_steps(x: float) -> int:
    # Round to the nearest step, halves up: 0.05 * 1010 = 50.5 -> 51. (Python's round() would
    # round halves to even, which makes lengths jump around as total_steps changes.)
    return math.floor(x + 0.5)


def to_steps(value: Any, total_steps: int, tokens_per_step: int | None = None, name: str = "length") -> int:
    """Convert one length to whole optimizer steps.

    - int: steps (``300``);
    - float in [0, 1]: fraction of the run (``0.05``), rounded to the nearest step, halves up;
    - string: ``"5%"`` (fraction), ``"300"`` / ``"300 steps"`` / ``"1.5k steps"`` (whole steps),
      ``"2M tokens"`` / ``"500k tokens"`` / ``"1e6 tokens"`` (tokens / tokens_per_step, rounded
      to the nearest step, halves up). Magnitudes k, M, B (or G) are case-insensitive.
    """
    if isinstance(value, bool) or value is None:
        raise UserError(f"{name}={value!r} is not a length; {_LENGTH_FORMS}")
    if isinstance(value, numbers.Integral):
        if value < 0:
            raise UserError(f"{name}={value!r} is negative; a length must be >= 0")
        return int(value)
    if isinstance(value, numbers.Real):
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise UserError(
                f"{name}={value!r}: a float length is a fraction of the run and must be in [0, 1]; "
                f"for steps write an int ({name}=300) or a string ('300 steps')"
            )
        return _round_steps(float(value) * total_steps)
    if not isinstance(value, str):
        raise UserError(f"{name}={value!r} is not a length; {_LENGTH_FORMS}")

    match = _LENGTH_RE.fullmatch(value)
    try:
        number = float(match.group(1).replace("_", "")) if match else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise UserError(f"{name}={value!r} is not a length; {_LENGTH_FORMS}")
    magnitude, unit = match.group(2).lower(), (match.group(3) or "steps").lower()
    number *= _MAGNITUDE[magnitude]
    if number < 0:
        raise UserError(f"{name}={value!r} is negative; a length must be >= 0")
    if unit == "%":
        if magnitude or number > 100:
            raise UserError(f"{name}={value!r}: a percentage must be between 0% and 100% of the run")
        return _round_steps(number / 100.0 * total_steps)
    if unit.startswith("token"):
        if tokens_per_step is None:
            raise UserError(
                f"{name}={value!r} is given in tokens, but the number of tokens per step is unknown "
                "here; give it in steps or as a fraction, or build through schedule_from_config"
            )
        return _round_steps(number / tokens_per_step)
    if number != math.floor(number):
        raise UserError(f"{name}={value!r}: steps must be a whole number; {_LENGTH_FORMS}")
    return int(number)


# --------------------------------------------------------------------------------------------
# Parameter checks (usable by schedules registered in other modules)
# --------------------------------------------------------------------------------------------


def check_range(
    p: Any,
    name: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    lo_label: str = "",
    hi_label: str = "",
) -> None:
    """Raise a one-line UserError unless ``lo <= p.<name> <= hi`` (strict where *_open)."""
    value = getattr(p, name)
    ok = (lo is None or (value > lo if lo_open else value >= lo)) and (
        hi is None or (value < hi if hi_open else value <= hi)
    )
    if ok:  # NaN fails every comparison, so it lands below
        return
    parts = []
    if lo is not None:
        parts.append(f"{lo!r}{f' ({lo_label})' if lo_label else ''} {'<' if lo_open else '<='}")
    parts.append(name)
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi!r}{f' ({hi_label})' if hi_label else ''}")
    raise UserError(f"{name}={value!r} is out of range; accepted: {' '.join(parts)}")


def check_choice(p: Any, name: str, choices: Sequence[str]) -> None:
    """Raise a one-line UserError unless ``p.<name>`` is one of ``choices``."""
    value = getattr(p, name)
    if value in choices:
        return
    closest = difflib.get_close_matches(str(value), list(choices), n=1)
    suggestion = f" (did you mean '{closest[0]}'?)" if closest else ""
    raise UserError(f"{name}={value!r} is not accepted{suggestion}; accepted: {', '.join(choices)}")


# --------------------------------------------------------------------------------------------
# Schedule: what build_schedule returns
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A built schedule. Immutable: the only state is what it was built with."""

    name: str
    total_steps: int
    params: Any
    conventions: str = "minigpt"  # the preset that filled the unset convention keys (CONVENTION_PRESETS)
    # Updates by which the curve runs late: update t uses the formula at step t - lag (and
    # update 0 the formula at 0). 1 under conventions=deepspeed, whose engine sets the LR once
    # at construction and steps the scheduler after every update.
    lag: int = 0
    # The multiplier of the updates before the lag has run out; None: the formula at step 0.
    # 0.0 for DeepSpeed's WarmupCosineLR, whose get_lr() before its first step is 0 whatever its
    # warmup_min_ratio (WarmupLR and WarmupDecayLR give their start value there: None).
    lead_in: float | None = None

    def _at(self, step: float) -> float:
        if not step >= 0:
            raise ValueError(f"step must be a number >= 0, got {step!r}")
        return max(step - self.lag, 0)

    def __call__(self, step: float) -> float:
        """The LR multiplier for the update that follows ``step`` updates: lr = peak * f(step)."""
        if self.lead_in is not None and 0 <= step < self.lag:
            return float(self.lead_in)
        return float(_REGISTRY[self.name].fn(self._at(step), self.total_steps, self.params))

    def curve(self, steps) -> list[float]:
        """[self(t) for t in steps], about twice as fast: a 10^5-step run is walked to check it
        and again to predict its loss (the formula is called directly, without __call__'s checks)."""
        fn, total, params, lag = _REGISTRY[self.name].fn, self.total_steps, self.params, self.lag
        if lag == 0:
            return [float(fn(t, total, params)) for t in steps]
        return [self(t) for t in steps]

    def beta1(self, step: float) -> float | None:
        """Adam's beta1 for the step where the schedule cycles it (one_cycle), else None."""
        fn = _REGISTRY[self.name].beta1
        return None if fn is None else fn(self._at(step), self.total_steps, self.params)

    def phases(self) -> dict[str, int]:
        """Phase boundaries as {label: first step of the phase}, in order."""
        phases = getattr(self.params, "phases", None)
        found = dict(phases(self.total_steps)) if phases else {}
        return {k: v + self.lag if v > 0 else v for k, v in found.items() if v + self.lag < self.total_steps or v == 0}

    def describe(self) -> dict:
        """Where the curve goes, measured on steps 0..total_steps-1.

        ``peak``/``peak_step``: the largest multiplier and the first step that reaches it;
        ``floor``/``floor_step``: the smallest multiplier from the peak on, and where it is first
        reached; ``start`` and ``final``: the multipliers at steps 0 and total_steps-1;
        ``phases``: {label: first step of the phase}. Runs longer than EXACT_STEPS are measured
        on the steps of `curve_steps`.
        """
        steps = curve_steps(self)
        values = [self(t) for t in steps]
        peak = max(values)
        peak_at = values.index(peak)
        after = values[peak_at:]
        floor = min(after)
        return {
            "name": self.name,
            "total_steps": self.total_steps,
            "start": values[0],
            "peak": peak,
            "peak_step": steps[peak_at],
            "floor": floor,
            "floor_step": steps[peak_at + after.index(floor)],
            "final": values[-1],
            "phases": self.phases(),
            "conventions": self.conventions,
            "lag": self.lag,
        }

    def summary_line(self, peak_lr: float) -> str:
        """One line for humans, e.g. ``cosine_warmup (1000 steps): warmup 0..49, decay 50..999;
        peak 0.003 at step 49, floor 0.0003 at step 999``."""
        d = self.describe()
        bounds = sorted(d["phases"].items(), key=lambda kv: kv[1]) + [("", self.total_steps)]
        spans = [f"{label} {a}..{b - 1}" for (label, a), (_, b) in zip(bounds, bounds[1:]) if a < b]
        line = f"{self.name} ({self.total_steps} steps"
        line += f", {self.conventions} conventions): " if self.conventions != "minigpt" else "): "
        line += (", ".join(spans) + "; ") if spans else ""
        line += f"start {d['start'] * peak_lr:.3g}, peak {d['peak'] * peak_lr:.3g} at step {d['peak_step']}"
        if d["floor"] >= d["peak"]:  # nothing below the peak after it: no floor to speak of
            if d["peak_step"] == self.total_steps - 1:
                return line + " (the last step: it only rises)"
            return line + ", held there to the end"
        line += f", floor {d['floor'] * peak_lr:.3g} at step {d['floor_step']}"
        if d["floor_step"] != self.total_steps - 1:
            line += f", final {d['final'] * peak_lr:.3g}"
        return line


# Runs up to this many steps have every step checked; longer ones a sample (curve_steps).
EXACT_STEPS = 200_000
ZOOM_POINTS = 1000  # steps per round of the zoom on the highest sample (curve_steps)


def curve_steps(schedule: Schedule) -> Sequence[int]:
    """The steps at which the curve is checked and described: every step of a run up to
    EXACT_STEPS steps; for a longer run, EXACT_STEPS evenly spread steps plus the first and last
    thousand and each phase boundary with its neighbours (where peaks and floors sit), so that a
    10^9-step run is checked in a second rather than walked step by step for an hour.

    A peak between two samples (a triangle's tip) is found by zooming in on the highest sample:
    ZOOM_POINTS steps spread over the gap on either side of it, again around the highest of
    those, until the gap is walked step by step. The zoom takes O(log total) rounds, so memory
    and time stay bounded whatever the run length (a window of every step around the highest
    sample held 10^25 steps for trainer.max_steps=1e30)."""
    total = schedule.total_steps
    if total <= EXACT_STEPS:
        return range(total)
    steps = set(range(1000)) | set(range(total - 1000, total))
    steps.update((i * (total - 1)) // (EXACT_STEPS - 1) for i in range(EXACT_STEPS))
    for boundary in schedule.phases().values():
        steps.update(b for b in range(boundary - 2, boundary + 3) if 0 <= b < total)
    highest = max(steps, key=schedule)
    spacing = total // (EXACT_STEPS - 1) + 1
    lo, hi = max(0, highest - spacing), min(total - 1, highest + spacing)
    while hi - lo > 2 * ZOOM_POINTS:
        probes = {lo + (i * (hi - lo)) // (ZOOM_POINTS - 1) for i in range(ZOOM_POINTS)}
        steps.update(probes)
        best = max(probes, key=schedule)
        gap = (hi - lo) // (ZOOM_POINTS - 1) + 1
        lo, hi = max(lo, best - gap), min(hi, best + gap)
    steps.update(range(lo, hi + 1))
    return sorted(steps)


def check_curve(schedule: Schedule) -> None:
    """Raise UserError if the multiplier over steps 0..total_steps-1 (curve_steps: all of them up to
    EXACT_STEPS) is ever NaN/inf or negative,
    or is still rising below the peak (1.0) when the run ends, e.g. because the warmup is longer
    than the run.

    A curve that approaches the peak and turns down before reaching it is accepted: DeepSpeed's
    WarmupCosineLR with a linear warmup does that (its warmup stops one increment short of the
    peak, and its cosine starts one step into the decay), and conventions=deepspeed reproduces it.
    """
    best, best_step = -math.inf, 0
    steps = curve_steps(schedule)
    cycles_beta1 = _REGISTRY[schedule.name].beta1 is not None
    for t, value in zip(steps, schedule.curve(steps)):
        if not math.isfinite(value) or value < 0:
            raise UserError(
                f"scheduler '{schedule.name}': the LR multiplier at step {t} is {value!r}; "
                "it must be a finite number >= 0"
            )
        if value > best:
            best, best_step = value, t
        beta1 = schedule.beta1(t) if cycles_beta1 else None
        if beta1 is not None and not 0.0 <= beta1 < 1.0:
            raise UserError(f"scheduler '{schedule.name}': beta1 at step {t} is {beta1!r}; it must be in [0, 1)")
    if best < 1.0 - 1e-9 and best_step == schedule.total_steps - 1:
        raise UserError(
            f"scheduler '{schedule.name}': the LR never reaches its peak in {schedule.total_steps} steps "
            f"(highest multiplier {best:.4g} at step {best_step}); is the warmup (or rising phase) "
            "longer than the run, or does the warmup convention put the peak one step past the end?"
        )


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def build_schedule(name: str, total_steps: int, *, conventions: str | None = "minigpt", **params: Any) -> Schedule:
    """Build a registered schedule for a run of ``total_steps`` optimizer steps.

    Parameters not given (or given as None where None is no value of theirs) take their values
    from the ``conventions`` preset (`CONVENTION_PRESETS`), then their dataclass defaults.
    Lengths may be ints (steps) or anything `to_steps` accepts except tokens (use
    `schedule_from_config` for those); the built params hold whole steps. Every bad input is a
    one-line UserError.
    """
    entry = _lookup(name)
    if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral) or total_steps < 1:
        raise UserError(f"total_steps={total_steps!r} is out of range; accepted: an int >= 1")
    total_steps = int(total_steps)
    fields = {f.name: f for f in dataclasses.fields(entry.params) if f.init}
    conventions = "minigpt" if conventions is None else conventions
    if conventions not in CONVENTION_PRESETS:
        closest = difflib.get_close_matches(str(conventions), list(CONVENTION_PRESETS), n=1)
        hint = f" (did you mean '{closest[0]}'?)" if closest else ""
        raise UserError(f"scheduler.conventions={conventions!r} is not a preset{hint}; accepted: "
                        f"{', '.join(CONVENTION_PRESETS)}")
    params, lag = _apply_preset(name, conventions, fields, params)

    for key in params:
        if key not in fields:
            closest = difflib.get_close_matches(key, list(fields), n=1)
            suggestion = f" (did you mean '{closest[0]}'?)" if closest else ""
            accepted = ", ".join(fields) or "none"
            raise UserError(f"scheduler '{name}' has no parameter '{key}'{suggestion}; accepted parameters: {accepted}")

    hints = typing.get_type_hints(entry.params)
    values = {}
    for key, f in fields.items():
        if key in params:
            raw = params[key]
        elif f.default is not dataclasses.MISSING:
            raw = f.default
        elif f.default_factory is not dataclasses.MISSING:
            raw = f.default_factory()
        else:
            raise UserError(f"scheduler '{name}' needs parameter '{key}'; set it with scheduler.{key}=...")
        try:
            # The config's rules (config.coerce); a length is whole steps from a count, a
            # fraction or a percentage (tokens were converted by schedule_from_config).
            lengths = (lambda v, k: to_steps(v, total_steps, None, k)) if f.metadata.get("length") else None
            values[key] = coerce(raw, hints.get(key, Any), key, scalar=lengths)
        except UserError as e:
            raise UserError(f"scheduler '{name}': {e}") from None

    if conventions == "deepspeed" and "warmup" in values:
        values["warmup"] = max(2, values["warmup"])  # DeepSpeed: warmup_num_steps = max(2, warmup_num_steps)
    _check_reproducible(name, conventions, values)
    p = entry.params(**values)
    validate = getattr(p, "validate", None)
    if validate is not None:
        try:
            validate(total_steps)
        except UserError as e:
            raise UserError(f"scheduler '{name}': {e}") from None
    lead_in = 0.0 if conventions == "deepspeed" and name == "cosine_warmup" else None
    return Schedule(name, total_steps, p, conventions, lag, lead_in)


def _check_reproducible(name: str, conventions: str, values: Mapping) -> None:
    """Refuse, in one line, the parameter values a reference library's curve cannot take: where the
    reference ties the warmup's start to the floor, they must be equal."""
    tied = {("hf", "wsd"): "HF's get_wsd_schedule warms up from its min_lr_ratio",
            ("deepspeed", "linear_warmup"): "DeepSpeed's WarmupDecayLR decays to its warmup_min_lr, where it starts"}
    why = tied.get((conventions, name))
    start, floor = values.get("warmup_start_ratio"), values.get("min_lr_ratio")
    if why and start != floor:
        raise UserError(f"scheduler '{name}' with scheduler.conventions={conventions}: {why}, so warmup_start_ratio "
                        f"({start!r}) must equal min_lr_ratio ({floor!r}); leave warmup_start_ratio null (it follows "
                        "min_lr_ratio) or use scheduler.conventions=minigpt")


# --------------------------------------------------------------------------------------------
# Convention presets: where a reference library's defaults differ from ours, in one switch
# --------------------------------------------------------------------------------------------

# The keys a preset fills when the config leaves them unset (null). The shipped config files
# leave them null, so `scheduler.conventions=hf` changes them and an explicit
# `scheduler.min_lr_ratio=0.1` on the command line still wins over the preset.
PRESET_KEYS = ("warmup_convention", "decay_convention", "warmup_start_ratio", "min_lr_ratio", "power", "decay_shape")

# minigpt: the dataclass defaults (never an update at LR 0, the floor on the last step, 10% floors).
# hf: the Hugging Face Trainer's defaults (transformers.get_scheduler): the warmup starts at 0,
#   the peak is reached at step W, the decay reaches 0 at T (one past the run); polynomial's
#   power is 1.0, warmup_stable_decay's decay_type is cosine.
# deepspeed: DeepSpeed's WarmupLR (constant_warmup), WarmupDecayLR (linear_warmup) and
#   WarmupCosineLR (cosine_warmup) as its engine runs them: the LR is set once when the scheduler
#   is built and the scheduler steps after every update, so update t uses the formula at t - 1
#   (lag 1) and updates 0 and 1 both run at the start value, except under WarmupCosineLR, whose
#   LR before its first step is 0 (update 0 at 0, update 1 at the start value); warmups shorter
#   than 2 steps are raised to 2; a log warmup keeps both ends (log(t+1)/log(W)), a linear one
#   skips its end (t/W). WarmupDecayLR's floor is its start (min_lr_ratio = warmup_start_ratio).
# hf, wsd: get_wsd_schedule warms up from its min_lr_ratio (warmup_start_ratio follows it).
CONVENTION_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "minigpt": {},
    "hf": {
        "*": {"warmup_convention": "skip_end", "decay_convention": "skip_end", "warmup_start_ratio": 0.0,
              "min_lr_ratio": 0.0},
        "polynomial": {"power": 1.0},
        "wsd": {"decay_shape": "cosine"},
    },
    "deepspeed": {
        "constant_warmup": {"warmup_start_ratio": 0.0},  # WarmupLR, warmup_min_lr=0
        "linear_warmup": {"warmup_start_ratio": 0.0, "decay_convention": "skip_end"},  # WarmupDecayLR: floor = warmup_min_lr
        "cosine_warmup": {"warmup_start_ratio": 0.0, "decay_convention": "skip_start", "min_lr_ratio": 1e-4},  # WarmupCosineLR
    },
}
_PRESET_LAG = {"deepspeed": 1}


def _apply_preset(name: str, conventions: str, fields: Mapping, params: Mapping) -> tuple[dict, int]:
    """Fill the unset preset keys of ``params`` from the preset; drop the rest of the unset ones
    (their dataclass defaults apply). Returns (params, lag)."""
    preset = CONVENTION_PRESETS[conventions]
    if conventions == "deepspeed" and name not in preset:
        raise UserError(f"scheduler.conventions=deepspeed reproduces DeepSpeed's WarmupLR (scheduler=constant_warmup), "
                        f"WarmupDecayLR (linear_warmup) and WarmupCosineLR (cosine_warmup), not scheduler={name}; "
                        "use one of those or scheduler.conventions=minigpt")
    values = {**preset.get("*", {}), **preset.get(name, {})}
    out = dict(params)
    unset = {k for k in PRESET_KEYS if k in fields and out.get(k, None) is None}
    for key in unset:
        out.pop(key, None)
        if key in values:
            out[key] = values[key]
    if conventions == "deepspeed":
        shape = out.get("warmup_shape", fields["warmup_shape"].default)
        if "warmup_convention" in unset:  # log(t+1)/log(W) reaches the peak at W-1; t/W at W
            out["warmup_convention"] = "keep_both" if shape == "log" else "skip_end"
        if name == "linear_warmup" and "min_lr_ratio" in unset:  # WarmupDecayLR decays to warmup_min_lr
            out["min_lr_ratio"] = out.get("warmup_start_ratio", 0.0)
    if conventions == "hf" and name == "wsd" and "warmup_start_ratio" in unset:
        out["warmup_start_ratio"] = out.get("min_lr_ratio", 0.0)  # HF's wsd warms up from its floor
    return out, _PRESET_LAG.get(conventions, 0)


def config_defaults(name: str | None) -> dict:
    """The ``scheduler`` config group of schedule ``name`` at its defaults, as plain values: its
    name, ``conventions``, and every parameter at its dataclass default, except the keys a
    convention preset fills, which are null (unset: the preset decides). ``name=None``: the keys
    of a schedule of one's own (``scheduler=custom``): name, conventions and module.

    The one source of the config's scheduler defaults: minigpt/launch/compose.py hands them to Hydra as
    the `scheduler` config group's options (no file in conf/; a user's scheduler/<name>.yaml
    under --config-dir may start from one and hold only what differs)."""
    if name is None:
        return {"name": None, "conventions": "minigpt", "module": None}
    out: dict[str, Any] = {"name": name, "conventions": "minigpt"}
    for f in dataclasses.fields(schedule_params(name)):
        if f.init:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[f.name] = None if f.name in PRESET_KEYS else list(default) if isinstance(default, tuple) else default
    return out


def import_schedule_module(module: str) -> None:
    """Import `module` (scheduler.module), with the working directory importable, as `python -m`
    makes it: `python <checkout>/train.py scheduler.module=my_pkg.scheds` run from a project folder
    finds my_pkg/ there. The folder goes last on sys.path, so it shadows no installed package."""
    cwd = os.getcwd()
    if cwd not in (os.path.abspath(entry) for entry in sys.path):
        sys.path.append(cwd)
    try:
        importlib.import_module(module)
    except ImportError as e:
        missing = getattr(e, "name", None)
        if missing and (module == missing or module.startswith(missing + ".")):
            # The module itself (or its package) is not there, not an import inside it.
            raise UserError(
                f"scheduler.module={module!r} cannot be imported: {e} (looked in the working directory {cwd} and on "
                f"sys.path); run from the folder that holds {missing.split('.')[0]}/, install it (pip install -e), "
                "or add the folder that holds it to PYTHONPATH") from None
        raise UserError(f"scheduler.module={module!r} cannot be imported: {e} (raised while importing it)") from None


def apply_scoped_keys(cfg: dict, name: str) -> dict:
    """The scheduler keys of schedule `name`: the plain ones, and those scoped to it, which win
    (``scheduler.wsd.decay=0.3`` is ``{"wsd": {"decay": 0.3}}`` here). Keys scoped to another
    schedule are left out: a sweep over several schedules gives each its own keys
    (docs/sweeps.md). A scope that names no schedule is refused with the closest name."""
    out, scoped = {}, {}
    for key, value in cfg.items():
        (scoped if isinstance(value, Mapping) else out)[key] = value
    names = list_schedules()
    for scope, keys in scoped.items():
        if scope not in names:
            close = difflib.get_close_matches(str(scope), names, n=1)
            hint = f" (did you mean 'scheduler.{close[0]}'?)" if close else ""
            raise UserError(f"scheduler.{scope}: '{scope}' is no schedule{hint}; keys of one schedule only are written "
                            f"scheduler.<schedule>.<key>, e.g. scheduler.wsd.decay=0.3; schedules: {', '.join(names)}")
    for key, value in scoped.get(name, {}).items():
        out[key] = value
    return out


def schedule_from_config(cfg: Mapping, total_steps: int, tokens_per_step: int | None) -> Schedule:
    """Build the schedule described by the ``scheduler`` config group.

    ``cfg`` holds ``name``, optionally ``module`` (a dotted module path imported first, so that
    schedules registered outside minigpt can be used) and the schedule's parameters. Lengths are
    converted to whole steps here, once (see `to_steps`), with ``tokens_per_step`` for token
    counts; then `build_schedule` builds the schedule.
    """
    cfg = dict(cfg)
    name, module, conventions = cfg.pop("name", None), cfg.pop("module", None), cfg.pop("conventions", None)
    if module is not None:
        if not isinstance(module, str) or not module:
            raise UserError(f"scheduler.module={module!r} must be a dotted module path, e.g. my_pkg.schedules")
        import_schedule_module(module)
    if name is None:
        raise UserError(
            "scheduler.name is not set: pick one with scheduler=<name> (or, for your own schedule, "
            "scheduler=custom scheduler.module=<your.module> scheduler.name=<its name>); "
            f"registered: {', '.join(list_schedules())}"
        )
    hint = (
        f" (module '{module}' was imported but registers no schedule named {name!r})"
        if module
        else " (for a schedule of your own, set scheduler.module to the module that registers it)"
    )
    entry = _lookup(name, hint)
    cfg = apply_scoped_keys(cfg, name)
    if tokens_per_step is not None and (
        isinstance(tokens_per_step, bool) or not isinstance(tokens_per_step, numbers.Integral) or tokens_per_step < 1
    ):
        raise UserError(f"tokens_per_step={tokens_per_step!r} is out of range; accepted: an int >= 1 or None")
    if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral) or total_steps < 1:
        raise UserError(f"total_steps={total_steps!r} is out of range; accepted: an int >= 1")

    lengths = {f.name for f in dataclasses.fields(entry.params) if f.metadata.get("length")}
    for key in lengths & set(cfg):
        value = cfg[key]
        try:
            if value is None:
                pass
            elif isinstance(value, Sequence) and not isinstance(value, str):
                cfg[key] = tuple(to_steps(v, total_steps, tokens_per_step, f"{key}[{i}]") for i, v in enumerate(value))
            else:
                cfg[key] = to_steps(value, total_steps, tokens_per_step, key)
        except UserError as e:
            raise UserError(f"scheduler '{name}': {e}") from None
    return build_schedule(name, total_steps, conventions=conventions, **cfg)


# --------------------------------------------------------------------------------------------
# Shared pieces: warmup and decay ramps
# --------------------------------------------------------------------------------------------

WARMUP_SHAPES = ("linear", "cosine", "exponential", "log", "1-sqrt")
DECAY_SHAPES = ("linear", "cosine", "1-sqrt", "exponential")

# A warmup (or decay) is a ramp sampled on the steps of its phase. The convention says which end
# of the ramp is skipped, i.e. does not land on a step of the phase: (skip start, skip end).
#   skip_start: step 0 is already one increment up; the target is hit on the phase's last step.
#   skip_end:   the phase starts at its start value; the target is reached one step after it.
#   keep_both:  both ends land on the phase's first and last steps.
#   skip_both:  neither does.
CONVENTIONS = ("skip_start", "skip_end", "keep_both", "skip_both")
_SKIPS = {"skip_start": (1, 0), "skip_end": (0, 1), "keep_both": (0, 0), "skip_both": (1, 1)}


@dataclass(frozen=True)
class WarmupParams:
    """The warmup every *_warmup-style schedule shares.

    The parameters' comments here and below are the config's documentation too (`scheduler=<name>`
    composes exactly these defaults: there is no YAML file per schedule). "null: from scheduler.conventions"
    marks a PRESET_KEYS key: the config leaves it null and the preset fills it; the dataclass
    default is the minigpt preset's value."""

    # warmup length: steps (300), fraction of the run (0.05), "5%", "300 steps" or "2M tokens".
    # 20% by default: with 10%, seed 5 of the default CPU run ended 0.45 nats above the others
    # (a gradient spike inside the warmup); with 20% it ends among them (README: ten seeds).
    warmup: int = length_field(0.2)
    # linear | cosine | exponential (needs warmup_start_ratio > 0) | log (DeepSpeed) | 1-sqrt
    warmup_shape: str = "linear"
    # null: from scheduler.conventions (minigpt: skip_start, step 0 at 1/W, peak at W-1 | hf: skip_end, start value at
    # step 0, peak at W); or keep_both | skip_both
    warmup_convention: str = "skip_start"
    # the warmup ramps up from this fraction of the peak LR (torch LinearLR start_factor); null: from
    # scheduler.conventions (0)
    warmup_start_ratio: float = 0.0

    def validate(self, total_steps: int) -> None:
        check_range(self, "warmup", 0, total_steps, hi_label="total_steps")
        check_choice(self, "warmup_shape", WARMUP_SHAPES)
        check_choice(self, "warmup_convention", CONVENTIONS)
        check_range(self, "warmup_start_ratio", 0.0, 1.0)
        if self.warmup_shape == "exponential" and not self.warmup_start_ratio > 0:
            raise UserError(
                f"warmup_start_ratio={self.warmup_start_ratio!r} is out of range for warmup_shape=exponential; "
                "accepted: 0 < warmup_start_ratio <= 1 (a geometric ramp cannot start at 0), e.g. 0.01"
            )

    def phases(self, total_steps: int) -> dict[str, int]:
        return {"warmup": 0} if self.warmup > 0 else {}


@dataclass(frozen=True)
class DecayParams(WarmupParams):
    """A warmup followed by a decay whose ramp convention can be chosen."""

    # null: from scheduler.conventions (minigpt: skip_start, floor at the last step T-1 | hf: skip_end, floor at T,
    # past the run); or keep_both | skip_both
    decay_convention: str = "skip_start"

    def validate(self, total_steps: int) -> None:
        super().validate(total_steps)
        check_choice(self, "decay_convention", CONVENTIONS)

    def phases(self, total_steps: int) -> dict[str, int]:
        return {**super().phases(total_steps), "decay": self.warmup}


def _warmup_end(p: WarmupParams) -> int:
    """The step at which the warmup ramp reaches the peak: W-1 (end kept) or W (end skipped)."""
    return 0 if p.warmup == 0 else p.warmup - 1 + _SKIPS[p.warmup_convention][1]


def _warmup(t: float, p: WarmupParams) -> float:
    """The warmup ramp from warmup_start_ratio to 1 at step t (before _warmup_end)."""
    skip_start, skip_end = _SKIPS[p.warmup_convention]
    n = p.warmup - 1 + skip_start + skip_end  # increments from the start value to the peak
    if n <= 0:
        return 1.0
    k = t + skip_start  # increments done at step t
    u = min(k / n, 1.0)
    s = p.warmup_start_ratio
    if p.warmup_shape == "exponential":
        return s ** (1.0 - u)  # geometric: the same factor every step
    if p.warmup_shape == "linear":
        g = u
    elif p.warmup_shape == "cosine":
        g = 0.5 * (1.0 - math.cos(math.pi * u))  # HF wsd warmup_type="cosine"
    elif p.warmup_shape == "1-sqrt":
        g = 1.0 - math.sqrt(1.0 - u)  # HF wsd warmup_type="1-sqrt"
    else:  # log: DeepSpeed WarmupLR log(t+1)/log(W) is keep_both over W steps
        g = math.log1p(min(k, n)) / math.log1p(n)
    return g * (1.0 - s) + s  # the order HF uses, so that parity is bit-for-bit where it can be


def _decay_window(p: DecayParams, first: int, total_steps: int) -> tuple[int, int]:
    """The decay ramp is sampled on steps first..total_steps-1. Returns (origin, end): the steps,
    possibly virtual, at which the ramp is at the peak and at the floor."""
    skip_start, skip_end = _SKIPS[p.decay_convention]
    if first == 0:
        skip_start = 0  # nothing comes before the decay: a run starts at its peak
    return first - skip_start, total_steps - 1 + skip_end


def _warmup_then(t: float, p: DecayParams, first: int, total_steps: int, decay: Callable[[float, int, int], float]):
    """Warmup ramp, then the peak until the decay's origin, then ``decay(t, origin, end)``."""
    if t < _warmup_end(p):
        return _warmup(t, p)
    origin, end = _decay_window(p, first, total_steps)
    if t <= origin:
        return 1.0
    return decay(t, origin, end)


def _ramp_down(shape: str, t: float, origin: int, end: int, floor: float) -> float:
    """A decay from 1 at ``origin`` to ``floor`` at ``end`` (held there after it)."""
    span = max(end - origin, 1)  # a one-step ramp sits at the peak, as in HF's max(1, ...)
    if shape == "linear":
        f = max(0.0, (end - t) / span)  # HF linear / DeepSpeed WarmupDecayLR write it this way
    else:
        q = min((t - origin) / span, 1.0)
        if shape == "exponential":
            return floor**q  # geometric from 1 to floor (floor > 0)
        if shape == "cosine":
            f = 0.5 * (1.0 + math.cos(math.pi * q))
        else:  # 1-sqrt, Hägele et al. 2024 cooldown, HF wsd decay_type="1-sqrt"
            f = 1.0 - math.sqrt(q)
    return f * (1.0 - floor) + floor


def _ratio(p: Any, name: str) -> None:
    check_range(p, name, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# The schedules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConstantParams:
    pass


@register_schedule("constant", ConstantParams)
def constant(step: float, total_steps: int, p: ConstantParams) -> float:
    # HF get_constant_schedule.
    return 1.0


@dataclass(frozen=True)
class ConstantWarmupParams(WarmupParams):
    def phases(self, total_steps: int) -> dict[str, int]:
        return {**super().phases(total_steps), "constant": self.warmup}


@register_schedule("constant_warmup", ConstantWarmupParams)
def constant_warmup(step: float, total_steps: int, p: ConstantWarmupParams) -> float:
    # HF constant_with_warmup, torch LinearLR (start_factor=warmup_start_ratio), DeepSpeed WarmupLR.
    return _warmup(step, p) if step < _warmup_end(p) else 1.0


@dataclass(frozen=True)
class CosineWarmupParams(DecayParams):
    # floor of the decay, as a fraction of the peak LR; null: from scheduler.conventions (minigpt: 0.1 | hf: 0)
    min_lr_ratio: float = 0.1

    def validate(self, total_steps: int) -> None:
        super().validate(total_steps)
        _ratio(self, "min_lr_ratio")


@register_schedule("cosine_warmup", CosineWarmupParams)
def cosine_warmup(step: float, total_steps: int, p: CosineWarmupParams) -> float:
    # Half a cosine from the peak to min_lr_ratio: SGDR without restarts, HF cosine /
    # cosine_with_min_lr / cosine_warmup_with_min_lr, torch CosineAnnealingLR, nanoGPT.
    return _warmup_then(step, p, p.warmup, total_steps, lambda t, o, e: _ramp_down("cosine", t, o, e, p.min_lr_ratio))


@dataclass(frozen=True)
class LinearWarmupParams(DecayParams):
    # floor of the decay, as a fraction of the peak LR; null: from scheduler.conventions (minigpt: 0.1 | hf: 0)
    min_lr_ratio: float = 0.1

    def validate(self, total_steps: int) -> None:
        super().validate(total_steps)
        _ratio(self, "min_lr_ratio")


@register_schedule("linear_warmup", LinearWarmupParams)
def linear_warmup(step: float, total_steps: int, p: LinearWarmupParams) -> float:
    # HF linear (get_linear_schedule_with_warmup), DeepSpeed WarmupDecayLR.
    return _warmup_then(step, p, p.warmup, total_steps, lambda t, o, e: _ramp_down("linear", t, o, e, p.min_lr_ratio))


@dataclass(frozen=True)
class PolynomialParams(DecayParams):
    # exponent of the decay, > 0; null: from scheduler.conventions (minigpt: 2.0 | hf: 1.0, HF's default)
    power: float = 2.0
    # floor of the decay, as a fraction of the peak LR; null: from scheduler.conventions (minigpt: 0.1 | hf: 0)
    min_lr_ratio: float = 0.1

    def validate(self, total_steps: int) -> None:
        super().validate(total_steps)
        check_range(self, "power", 0.0, lo_open=True)
        _ratio(self, "min_lr_ratio")


@register_schedule("polynomial", PolynomialParams)
def polynomial(step: float, total_steps: int, p: PolynomialParams) -> float:
    # HF polynomial: (1 - r) * remaining**power + r (BERT / fairseq); torch PolynomialLR with r = 0.
    def decay(t, origin, end):
        remaining = max(0.0, (end - t) / max(end - origin, 1))
        return (1.0 - p.min_lr_ratio) * remaining**p.power + p.min_lr_ratio

    return _warmup_then(step, p, p.warmup, total_steps, decay)


@dataclass(frozen=True)
class InverseSqrtParams(DecayParams):
    # steps over which the LR falls by 1/sqrt(2); null: the warmup length
    timescale: int | None = length_field(None)

    def validate(self, total_steps: int) -> None:
        super().validate(total_steps)
        if self.timescale is None and self.warmup == 0:
            raise UserError("timescale=None needs warmup > 0 (it defaults to the warmup); set timescale >= 1")
        if self.timescale is not None:
            check_range(self, "timescale", 1)


@register_schedule("inverse_sqrt", InverseSqrtParams)
def inverse_sqrt(step: float, total_steps: int, p: InverseSqrtParams) -> float:
    # sqrt(timescale / (steps since the peak + timescale)): 1 at the peak, then 1/sqrt(step).
    # With timescale = warmup and skip_start this is Vaswani et al. 2017,
    # d_model^-0.5 * min(s^-0.5, s * W^-1.5) with s = step + 1, divided by its peak; with skip_end
    # it is HF inverse_sqrt (big_vision's timescale form). Only where the decay starts matters here.
    tau = p.timescale if p.timescale is not None else p.warmup
    return _warmup_then(step, p, p.warmup, total_steps, lambda t, o, e: 1.0 / math.sqrt((t - o + tau) / tau))


def _stages(p: WarmupParams, starts: Iterable[float], total_steps: int) -> dict[str, int]:
    """Phase labels for staircases: the warmup, then "stage 1", "stage 2", ... (at most 20)."""
    out = WarmupParams.phases(p, total_steps)
    for i, s in enumerate(itertools.islice((s for s in starts if s < total_steps), 20)):
        out[f"stage {i + 1}"] = math.ceil(s)
    return out


@dataclass(frozen=True)
class StepParams(DecayParams):
    # steps between two drops (a length, like warmup)
    step_size: int = length_field(0.3)
    # factor applied at each drop, in (0, 1]
    gamma: float = 0.1

    def validate(self, total_steps: int) -> None:
        super().validate(total_steps)
        check_range(self, "step_size", 1)
        check_range(self, "gamma", 0.0, 1.0, lo_open=True)

    def phases(self, total_steps: int) -> dict[str, int]:
        origin, _ = _decay_window(self, self.warmup, total_steps)
        drops = itertools.count(origin + self.step_size, self.step_size)
        return _stages(self, itertools.chain([self.warmup], itertools.takewhile(lambda s: s < total_steps, drops)), total_steps)


@register_schedule("step", StepParams)
def step_decay(step: float, total_steps: int, p: StepParams) -> float:
    # torch StepLR: gamma ** floor(steps since the peak / step_size); the floor keeps it a
    # staircase for fractional steps too.
    return _warmup_then(step, p, p.warmup, total_steps, lambda t, o, e: p.gamma ** math.floor((t - o) / p.step_size))


@dataclass(frozen=True)
class MultiStepParams(WarmupParams):
    # absolute steps at which the LR drops (lengths: 500, 0.5, "50%", "2M tokens"), increasing
    milestones: tuple[int, ...] = length_field((0.5, 0.75))
    # factor applied at each milestone, in (0, 1]
    gamma: float = 0.1

    def validate(self, total_steps: int) -> None:
        super().validate(total_steps)
        check_range(self, "gamma", 0.0, 1.0, lo_open=True)
        for i, m in enumerate(self.milestones):
            if not self.warmup <= m <= total_steps - 1:
                raise UserError(
                    f"milestones[{i}]={m} is out of range; accepted: {self.warmup} (warmup) <= milestone "
                    f"<= {total_steps - 1} (total_steps - 1)"
                )
        if list(self.milestones) != sorted(set(self.milestones)):
            raise UserError(f"milestones={list(self.milestones)} must be strictly increasing")

    def phases(self, total_steps: int) -> dict[str, int]:
        return _stages(self, [self.warmup, *self.milestones], total_steps)


@register_schedule("multistep", MultiStepParams)
def multistep(step: float, total_steps: int, p: MultiStepParams) -> float:
    # torch MultiStepLR: gamma ** (number of milestones passed); milestones are absolute steps.
    if step < _warmup_end(p):
        return _warmup(step, p)
    return p.gamma ** bisect.bisect_right(p.milestones, step)


@dataclass(frozen=True)
class ExponentialParams(DecayParams):
    # factor per step_size steps, in (0, 1]
    gamma: float = 0.5
    # steps over which the LR is multiplied by gamma (a length, like warmup)
    step_size: int = length_field(0.1)

    def validate(self, total_steps: int) -> None:
        super().validate(total_steps)
        check_range(self, "gamma", 0.0, 1.0, lo_open=True)
        check_range(self, "step_size", 1)


@register_schedule("exponential", ExponentialParams)
def exponential(step: float, total_steps: int, p: ExponentialParams) -> float:
    # gamma ** (steps since the peak / step_size), continuous: torch ExponentialLR with
    # step_size=1, TF exponential_decay(decay_steps=step_size, staircase=False).
    return _warmup_then(step, p, p.warmup, total_steps, lambda t, o, e: p.gamma ** ((t - o) / p.step_size))


@dataclass(frozen=True)
class CosineRestartsParams(DecayParams):
    # number of cycles that exactly fill the run after the warmup (HF num_cycles); set null to use period
    cycles: int | None = 3
    # length of the first cycle (torch T_0, timm t_initial), a length like warmup; set cycles: null to use it
    period: int | None = length_field(None)
    # each cycle is this many times longer than the one before (torch T_mult, timm cycle_mul), >= 1
    period_mult: float = 1.0
    # the peak of cycle i is cycle_decay**i (timm cycle_decay), in (0, 1]
    cycle_decay: float = 1.0
    # floor of the decay, as a fraction of the peak LR; null: from scheduler.conventions (minigpt: 0.1 | hf: 0)
    min_lr_ratio: float = 0.1
    # after this many cycles the LR stays at the floor (timm's cycle_limit, whose default 1 means no restart); null:
    # no limit
    cycle_limit: int | None = None

    def validate(self, total_steps: int) -> None:
        super().validate(total_steps)
        if self.cycle_limit is not None:
            check_range(self, "cycle_limit", 1)
        if (self.cycles is None) == (self.period is None):
            raise UserError(
                f"set exactly one of cycles (how many cycles fill the decay window) and period (the first "
                f"cycle's length); got cycles={self.cycles!r}, period={self.period!r}"
            )
        if self.cycles is not None:
            check_range(self, "cycles", 1)
        if self.period is not None:
            check_range(self, "period", 1)
        check_range(self, "period_mult", 1.0)
        check_range(self, "cycle_decay", 0.0, 1.0, lo_open=True)
        _ratio(self, "min_lr_ratio")

    def first_period(self, total_steps: int) -> float:
        if self.period is not None:
            return float(self.period)
        window = total_steps - self.warmup
        if self.period_mult == 1.0:
            return window / self.cycles
        return window * (self.period_mult - 1.0) / (self.period_mult**self.cycles - 1.0)

    def phases(self, total_steps: int) -> dict[str, int]:
        out = dict(WarmupParams.phases(self, total_steps))
        start, length = float(self.warmup), self.first_period(total_steps)
        for i in range(20):
            if start >= total_steps or length <= 0:
                break
            out[f"cycle {i + 1}"] = math.ceil(start)
            start, length = start + length, length * self.period_mult
        return out


def _cycle(d: float, p: CosineRestartsParams, total_steps: int) -> tuple[int, float, float]:
    """(cycle index, position in the cycle in [0, 1), cycle length) at d steps after the warmup."""
    length = p.first_period(total_steps)
    if p.period_mult == 1.0:
        if p.cycles is not None:
            # HF cosine_with_restarts writes the position as (cycles * progress) % 1; computing it
            # the same way keeps the restarts on the same steps even when the window is not a
            # multiple of the number of cycles.
            u = float(p.cycles) * (d / max(1, total_steps - p.warmup))
        else:
            u = d / length
        i = math.floor(u)
        return i, u - i, length
    i, start = 0, 0.0
    while d >= start + length:  # periods grow geometrically, so this loops O(log) times
        start, length, i = start + length, length * p.period_mult, i + 1
    return i, (d - start) / length, length


@register_schedule("cosine_restarts", CosineRestartsParams)
def cosine_restarts(step: float, total_steps: int, p: CosineRestartsParams) -> float:
    # SGDR (Loshchilov & Hutter 2017) with timm's cycle_decay: cycle i anneals from
    # cycle_decay**i to min_lr_ratio by half a cosine; cycle i+1 is period_mult times longer.
    # torch CosineAnnealingWarmRestarts, timm CosineLRScheduler, HF cosine_with_restarts.
    # The decay convention applies to every cycle, as a ramp sampled on the cycle's steps.
    if step < _warmup_end(p):
        return _warmup(step, p)
    d = step - p.warmup  # the cycles tile steps warmup..total_steps-1
    if d < 0:
        return 1.0
    if p.cycles is not None and d >= total_steps - p.warmup:
        return p.min_lr_ratio  # past the last cycle (HF returns its floor there)
    i, position, length = _cycle(d, p, total_steps)
    if p.cycle_limit is not None and i >= p.cycle_limit:
        return p.min_lr_ratio  # timm: cycles past cycle_limit sit at lr_min
    skip_start, skip_end = _SKIPS[p.decay_convention]
    if i == 0 and p.warmup == 0:
        skip_start = 0  # nothing comes before the first cycle: the run starts at its peak
    if skip_start or not skip_end:
        span = length - 1 + skip_start + skip_end
        position = (position * length + skip_start) / span if span > 0 else 0.0
    q = min(max(position, 0.0), 1.0)
    peak = p.cycle_decay**i
    return p.min_lr_ratio + 0.5 * (peak - p.min_lr_ratio) * (1.0 + math.cos(math.pi * q))


@dataclass(frozen=True)
class WSDParams(DecayParams):
    # length of the cooldown at the end of the run (a length, like warmup)
    decay: int = length_field(0.2)
    # absolute step where the cooldown starts (replaces decay): branch a cooldown off a stable-phase checkpoint
    decay_start: int | None = length_field(None)
    # linear | cosine | 1-sqrt (Hägele et al. 2024) | exponential (needs min_lr_ratio > 0); null: from
    # scheduler.conventions (minigpt: 1-sqrt | hf: cosine, HF's default)
    decay_shape: str = "1-sqrt"
    # floor reached at the end of the cooldown, as a fraction of the peak LR; null: from scheduler.conventions
    # (minigpt: 0.1, a departure from Hägele et al. and HF, who cool down to 0 | hf: 0)
    min_lr_ratio: float = 0.1

    def validate(self, total_steps: int) -> None:
        super().validate(total_steps)
        if self.decay_start is None:  # decay_start replaces the decay window when it is set
            check_range(self, "decay", 0, total_steps - self.warmup, hi_label="total_steps - warmup")
        else:
            check_range(self, "decay_start", self.warmup, total_steps, lo_label="warmup", hi_label="total_steps")
        check_choice(self, "decay_shape", DECAY_SHAPES)
        _ratio(self, "min_lr_ratio")
        if self.decay_shape == "exponential" and not self.min_lr_ratio > 0:
            raise UserError(
                f"min_lr_ratio={self.min_lr_ratio!r} is out of range for decay_shape=exponential; "
                "accepted: 0 < min_lr_ratio <= 1 (a geometric decay never reaches 0)"
            )

    def decay_begins(self, total_steps: int) -> int:
        return self.decay_start if self.decay_start is not None else total_steps - self.decay

    def phases(self, total_steps: int) -> dict[str, int]:
        return {**WarmupParams.phases(self, total_steps), "stable": self.warmup, "decay": self.decay_begins(total_steps)}


@register_schedule("wsd", WSDParams)
def wsd(step: float, total_steps: int, p: WSDParams) -> float:
    # Warmup-stable-decay (Zhai et al. 2022; Hu et al. 2024 MiniCPM; Hägele et al. 2024): the peak
    # until the decay window [decay_start, total_steps), then a cooldown to min_lr_ratio.
    # decay_start lets a cooldown branch off any checkpoint of the stable phase.
    # Departure: Hägele et al.'s code and HF get_wsd_schedule cool down to 0; our default floor is
    # 10% of the peak (the floor of every other decay here). conventions=hf, or min_lr_ratio=0,
    # gives theirs (HF warmup_stable_decay is conventions=hf exactly).
    first = p.decay_begins(total_steps)
    return _warmup_then(step, p, first, total_steps, lambda t, o, e: _ramp_down(p.decay_shape, t, o, e, p.min_lr_ratio))


@dataclass(frozen=True)
class OneCycleParams:
    # share of the run spent rising, as torch: the peak is at step pct_start * total_steps - 1, fractional when that
    # is (then between two steps, as torch)
    pct_start: float = 0.3
    # or the rising phase as a length (300, "30%"), peak at step warmup - 1; replaces pct_start when set
    warmup: int | None = length_field(None)
    # true: back down to the start LR at step 2*(pct_start*T)-2, then annihilate (Smith's original); false: fastai's
    # two phases
    three_phase: bool = False
    # cosine | linear (torch anneal_strategy cos | linear)
    anneal: str = "cosine"
    # the LR starts at peak / div_factor, >= 1
    div_factor: float = 25.0
    # the LR ends at peak / (div_factor * final_div_factor), >= 1
    final_div_factor: float = 1e4
    # cycle Adam's beta1 between max_momentum and base_momentum, opposite to the LR
    cycle_momentum: bool = True
    # beta1 at the peak LR
    base_momentum: float = 0.85
    # beta1 at the start and at the end
    max_momentum: float = 0.95

    def validate(self, total_steps: int) -> None:
        if self.warmup is not None:
            check_range(self, "warmup", 1, total_steps, hi_label="total_steps")
            if self.three_phase:
                check_range(self, "warmup", 1, (total_steps + 1) // 2, hi_label="(total_steps + 1) // 2, for three_phase")
        else:
            check_range(self, "pct_start", 0.0, 1.0, lo_open=True)
            rise = self.pct_start * total_steps
            if rise < 1:
                raise UserError(f"pct_start={self.pct_start!r} leaves no rising phase in {total_steps} steps "
                                f"(pct_start * total_steps = {rise:.4g} < 1); raise pct_start or set warmup >= 1")
            if self.three_phase and 2 * rise - 2 > total_steps - 1:
                raise UserError(f"pct_start={self.pct_start!r} is too long for three_phase: its second phase would end at "
                                f"step {2 * rise - 2:.4g}, past the last step {total_steps - 1}; accepted: pct_start <= "
                                f"{(total_steps + 1) / (2 * total_steps):.4g}")
        check_choice(self, "anneal", ("cosine", "linear"))
        check_range(self, "div_factor", 1.0)
        check_range(self, "final_div_factor", 1.0)
        check_range(self, "max_momentum", 0.0, 1.0, hi_open=True)
        check_range(self, "base_momentum", 0.0, self.max_momentum, hi_label="max_momentum")

    def rise_end(self, total_steps: int) -> float:
        """The (possibly fractional) step where the LR peaks: torch's pct_start * total_steps - 1,
        or warmup - 1 when the rise is given as a length."""
        if self.warmup is not None:
            return float(self.warmup - 1)
        return float(self.pct_start * total_steps) - 1

    def phases(self, total_steps: int) -> dict[str, int]:
        rise = self.rise_end(total_steps)
        out = {"warmup": 0, "decay": math.floor(rise) + 1}
        if self.three_phase:
            out["annihilation"] = math.floor(2 * rise) + 1
        return {k: v for k, v in out.items() if v < total_steps}

    def segments(self, total_steps: int) -> list[tuple[float, tuple[float, float], tuple[float, float]]]:
        """[(end step, (lr from, lr to), (beta1 from, beta1 to))] as torch OneCycleLR lays them out."""
        initial = 1.0 / self.div_factor
        low, high = self.base_momentum, self.max_momentum
        rise = self.rise_end(total_steps)  # torch: float(pct_start * total_steps) - 1
        if self.three_phase:
            return [
                (rise, (initial, 1.0), (high, low)),
                (2.0 * rise, (1.0, initial), (low, high)),
                (float(total_steps - 1), (initial, initial / self.final_div_factor), (high, high)),
            ]
        return [(rise, (initial, 1.0), (high, low)),
                (float(total_steps - 1), (1.0, initial / self.final_div_factor), (low, high))]


def _one_cycle_at(step: float, total_steps: int, p: OneCycleParams, which: int) -> float:
    start = 0.0
    segments = p.segments(total_steps)
    for i, (end, lr, beta) in enumerate(segments):
        if step <= end or i == len(segments) - 1:
            a, b = (lr, beta)[which]
            pct = (step - start) / (end - start) if end > start else 1.0
            if p.anneal == "cosine":
                return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)  # torch _annealing_cos
            return (b - a) * pct + a
        start = end
    raise AssertionError("unreachable")


def _one_cycle_beta1(step: float, total_steps: int, p: OneCycleParams) -> float | None:
    # torch OneCycleLR(cycle_momentum=True): beta1 moves opposite to the LR.
    return _one_cycle_at(step, total_steps, p, 1) if p.cycle_momentum else None


@register_schedule("one_cycle", OneCycleParams, beta1=_one_cycle_beta1)
def one_cycle(step: float, total_steps: int, p: OneCycleParams) -> float:
    # The 1cycle policy (Smith & Topin 2017) exactly as torch OneCycleLR lays it out, with max_lr
    # as the peak: from 1/div_factor up to 1 at step pct_start*T - 1 (fractional, as in torch;
    # or warmup-1), then down to 1/(div_factor*final_div_factor) at the last step (three_phase:
    # back to 1/div_factor at step 2*(pct_start*T) - 2 first). It already starts above 0 and ends
    # on its floor at T-1, so it has no convention options.
    return _one_cycle_at(step, total_steps, p, 0)


@dataclass(frozen=True)
class CyclicParams:
    # bottom of the cycle as a fraction of the peak LR (torch base_lr / max_lr); step 0 starts here
    base_lr_ratio: float = 0.1
    # steps from the bottom to the peak (a length, like 300 or "10%")
    step_size_up: int = length_field(0.1)
    # steps from the peak back to the bottom; null: same as step_size_up
    step_size_down: int | None = length_field(None)
    # triangular | triangular2 (amplitude halves every cycle) | exp_range (amplitude times gamma**step)
    mode: str = "triangular"
    # exp_range only: amplitude factor per step, in (0, 1]
    gamma: float = 1.0

    def validate(self, total_steps: int) -> None:
        check_range(self, "base_lr_ratio", 0.0, 1.0)
        check_range(self, "step_size_up", 1)
        if self.step_size_down is not None:
            check_range(self, "step_size_down", 0)
        check_choice(self, "mode", ("triangular", "triangular2", "exp_range"))
        check_range(self, "gamma", 0.0, 1.0, lo_open=True)

    def cycle_length(self) -> float:
        down = self.step_size_up if self.step_size_down is None else self.step_size_down
        return float(self.step_size_up + down)

    def phases(self, total_steps: int) -> dict[str, int]:
        n = self.cycle_length()
        return {f"cycle {i + 1}": int(i * n) for i in range(20) if i * n < total_steps}


@register_schedule("cyclic", CyclicParams)
def cyclic(step: float, total_steps: int, p: CyclicParams) -> float:
    # torch CyclicLR (Smith 2017), max_lr as the peak and base_lr = base_lr_ratio * peak: step 0 at
    # the base, the peak at step_size_up, back to the base after step_size_down more steps.
    # triangular2 halves the amplitude every cycle; exp_range scales it by gamma**step.
    total = p.cycle_length()
    cycle = math.floor(1 + step / total)
    x = 1.0 + step / total - cycle
    up_ratio = p.step_size_up / total
    scale_factor = x / up_ratio if x <= up_ratio else (x - 1) / (up_ratio - 1)
    if p.mode == "triangular":
        scale = 1.0
    elif p.mode == "triangular2":
        scale = 1 / (2.0 ** (cycle - 1))
    else:
        scale = p.gamma**step
    return p.base_lr_ratio + (1.0 - p.base_lr_ratio) * scale_factor * scale


@dataclass(frozen=True)
class LRRangeTestParams:
    # multiplier at step 0 (> 0 for the exponential ramp)
    start_lr_ratio: float = 1e-4
    # exponential (the same factor every step, as fastai lr_find) | linear
    shape: str = "exponential"

    def validate(self, total_steps: int) -> None:
        check_choice(self, "shape", ("exponential", "linear"))
        if self.shape == "exponential":
            check_range(self, "start_lr_ratio", 0.0, 1.0, lo_open=True)
        else:
            check_range(self, "start_lr_ratio", 0.0, 1.0)


@register_schedule("lr_range_test", LRRangeTestParams)
def lr_range_test(step: float, total_steps: int, p: LRRangeTestParams) -> float:
    # The LR range test (Smith 2017; fastai lr_find for the exponential ramp): from start_lr_ratio
    # at step 0 to 1 at the last step, so the run sweeps start_lr_ratio * lr .. lr.
    u = min(step / (total_steps - 1), 1.0) if total_steps > 1 else 1.0
    if p.shape == "exponential":
        return p.start_lr_ratio ** (1.0 - u)
    return p.start_lr_ratio + (1.0 - p.start_lr_ratio) * u
