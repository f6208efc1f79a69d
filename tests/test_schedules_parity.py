"""Parity: each schedule with a counterpart reproduces the reference curve to 1e-9 relative.

torch.optim.lr_scheduler and transformers.get_scheduler are driven for real: a dummy parameter,
an AdamW optimizer, and ``get_last_lr()`` read before each ``optimizer.step(); scheduler.step()``,
which is the LR the update at that step uses. References with no installed implementation
(DeepSpeed, Vaswani et al., timm, nanoGPT) are written out below from their papers / sources.

No tolerance is widened: torch's chainable (recursive) forms of CosineAnnealingLR, LinearLR and
PolynomialLR telescope, and stay within ~1e-13 relative of the closed form over these lengths.
"""

import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch.optim import lr_scheduler  # noqa: E402
from transformers import get_scheduler  # noqa: E402

from helpers import composed_scheduler  # noqa: E402
from minigpt.errors import UserError  # noqa: E402
from minigpt.schedules import build_schedule, check_curve, schedule_from_config  # noqa: E402


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

HF = {"warmup_convention": "skip_end", "decay_convention": "skip_end"}
# (total_steps, warmup): odd lengths, a single step, no warmup, warmup == run.
GRID = [(53, 7), (1, 0), (1, 1), (2, 1), (10, 0), (10, 10), (37, 36), (100, 25)]


def drive(opt, sched, steps):
    """The LR (and beta1) each of ``steps`` updates uses, read as a training loop would."""
    lrs, betas = [], []
    for t in range(steps):
        if t:  # step only between reads: some references divide by zero one step past the run
            opt.step()
            sched.step()
        lrs.append(sched.get_last_lr()[0])
        betas.append(opt.param_groups[0]["betas"][0])
    return lrs, betas


def optimizer(lr=1.0):
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def torch_curve(cls, steps, lr=1.0, **kwargs):
    opt = optimizer(lr)
    return drive(opt, cls(opt, **kwargs), steps)


def hf_curve(name, total, warmup, lr=1.0, **kwargs):
    opt = optimizer(lr)
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total,
                          scheduler_specific_kwargs=kwargs or None)
    return drive(opt, sched, total)[0]


def assert_curve(schedule, reference, peak=1.0, what="lr"):
    assert len(reference) == schedule.total_steps
    for t, want in enumerate(reference):
        got = peak * (schedule(t) if what == "lr" else schedule.beta1(t))
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12), f"step {t}: ours {got!r}, reference {want!r}"


# --------------------------------------------------------------------------------------------
# transformers.get_scheduler
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("total,warmup", GRID)
def test_hf_linear(total, warmup):
    ours = build_schedule("linear_warmup", total, warmup=warmup, min_lr_ratio=0.0, **HF)
    assert_curve(ours, hf_curve("linear", total, warmup))


@pytest.mark.parametrize("total,warmup", GRID)
def test_hf_cosine(total, warmup):
    ours = build_schedule("cosine_warmup", total, warmup=warmup, min_lr_ratio=0.0, **HF)
    assert_curve(ours, hf_curve("cosine", total, warmup))


@pytest.mark.parametrize("total,warmup", GRID)
def test_hf_cosine_with_min_lr(total, warmup):
    ours = build_schedule("cosine_warmup", total, warmup=warmup, min_lr_ratio=0.1, **HF)
    assert_curve(ours, hf_curve("cosine_with_min_lr", total, warmup, min_lr_rate=0.1))
    # The absolute form (min_lr) with a realistic peak.
    assert_curve(ours, hf_curve("cosine_with_min_lr", total, warmup, lr=3e-3, min_lr=3e-4), peak=3e-3)


@pytest.mark.parametrize("total,warmup", [g for g in GRID if g[1] >= 1])
def test_hf_cosine_warmup_with_min_lr_is_the_project_default(total, warmup):
    # HF's newer variant warms up by (t+1)/W and ends on the floor at T-1: our defaults.
    ours = build_schedule("cosine_warmup", total, warmup=warmup, min_lr_ratio=0.1)
    assert_curve(ours, hf_curve("cosine_warmup_with_min_lr", total, warmup, min_lr_rate=0.1))


@pytest.mark.parametrize("total,warmup", [g for g in GRID if g[1] >= 2])
def test_hf_cosine_warmup_with_min_lr_and_warmup_lr_rate(total, warmup):
    # warmup_lr_rate: linear from the rate at step 0 to the peak at W-1 (keep_both).
    ours = build_schedule("cosine_warmup", total, warmup=warmup, min_lr_ratio=0.1, warmup_start_ratio=0.05,
                          warmup_convention="keep_both")
    assert_curve(ours, hf_curve("cosine_warmup_with_min_lr", total, warmup, min_lr_rate=0.1, warmup_lr_rate=0.05))


@pytest.mark.parametrize("total,warmup", GRID)
@pytest.mark.parametrize("cycles", [1, 3, 4])
def test_hf_cosine_with_restarts(total, warmup, cycles):
    ours = build_schedule("cosine_restarts", total, warmup=warmup, cycles=cycles, min_lr_ratio=0.0, **HF)
    assert_curve(ours, hf_curve("cosine_with_restarts", total, warmup, num_cycles=cycles))


def test_hf_cosine_with_restarts_restarts_on_the_same_steps():
    # 14 cycles over 18 steps: HF's (cycles * progress) % 1 is exactly 0 at step 9, while
    # 9 / (18 / 14) is 6.999...; we compute the position as HF does, so the restart matches.
    ours = build_schedule("cosine_restarts", 25, warmup=7, cycles=14, min_lr_ratio=0.0, **HF)
    assert ours(16) == 1.0
    assert_curve(ours, hf_curve("cosine_with_restarts", 25, 7, num_cycles=14))


@pytest.mark.parametrize("total,warmup", GRID)
@pytest.mark.parametrize("power,end", [(1.0, 1e-7), (2.0, 0.1), (0.5, 0.0)])
def test_hf_polynomial(total, warmup, power, end):
    ours = build_schedule("polynomial", total, warmup=warmup, power=power, min_lr_ratio=end, **HF)
    assert_curve(ours, hf_curve("polynomial", total, warmup, power=power, lr_end=end))


@pytest.mark.parametrize("total", [1, 10, 53])
def test_hf_constant(total):
    assert_curve(build_schedule("constant", total), hf_curve("constant", total, 0))


@pytest.mark.parametrize("total,warmup", GRID)
def test_hf_constant_with_warmup(total, warmup):
    ours = build_schedule("constant_warmup", total, warmup=warmup, warmup_convention="skip_end")
    assert_curve(ours, hf_curve("constant_with_warmup", total, warmup))


@pytest.mark.parametrize("total,warmup", GRID)
@pytest.mark.parametrize("timescale", [None, 10, 1])
def test_hf_inverse_sqrt(total, warmup, timescale):
    if timescale is None and warmup == 0:
        timescale = 10_000  # HF's default when there is no warmup; ours asks for it explicitly
    ours = build_schedule("inverse_sqrt", total, warmup=warmup, timescale=timescale, **HF)
    opt = optimizer()
    sched = get_scheduler("inverse_sqrt", opt, num_warmup_steps=warmup, scheduler_specific_kwargs={"timescale": timescale})
    assert_curve(ours, drive(opt, sched, total)[0])


@pytest.mark.parametrize("total,warmup,decay",
                         [(53, 7, 11), (1, 0, 1), (1, 1, 0), (10, 0, 10), (10, 10, 0), (37, 5, 0), (100, 25, 75)])
@pytest.mark.parametrize("warmup_type,decay_type", [("linear", "cosine"), ("cosine", "linear"), ("1-sqrt", "1-sqrt")])
def test_hf_warmup_stable_decay(total, warmup, decay, warmup_type, decay_type):
    # HF's wsd warms up from min_lr_ratio, not from 0.
    ours = build_schedule("wsd", total, warmup=warmup, decay=decay, warmup_shape=warmup_type, decay_shape=decay_type,
                          warmup_start_ratio=0.1, min_lr_ratio=0.1, **HF)
    ref = hf_curve("warmup_stable_decay", total, warmup, num_decay_steps=decay, warmup_type=warmup_type,
                   decay_type=decay_type, min_lr_ratio=0.1)
    assert_curve(ours, ref)


# --------------------------------------------------------------------------------------------
# torch.optim.lr_scheduler
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("total,warmup", [(53, 7), (1, 1), (2, 1), (10, 10), (37, 36)])
@pytest.mark.parametrize("start", [0.1, 1 / 3, 1.0])
def test_torch_linear_lr_warmup(total, warmup, start):
    ours = build_schedule("constant_warmup", total, warmup=warmup, warmup_start_ratio=start, warmup_convention="skip_end")
    assert_curve(ours, torch_curve(lr_scheduler.LinearLR, total, start_factor=start, end_factor=1.0, total_iters=warmup)[0])


@pytest.mark.parametrize("total", [1, 2, 10, 53])
@pytest.mark.parametrize("end", [0.0, 0.25])
def test_torch_linear_lr_decay(total, end):
    ours = build_schedule("linear_warmup", total, warmup=0, min_lr_ratio=end, decay_convention="skip_end")
    assert_curve(ours, torch_curve(lr_scheduler.LinearLR, total, start_factor=1.0, end_factor=end, total_iters=total)[0])


@pytest.mark.parametrize("total", [1, 2, 10, 53, 1000])
@pytest.mark.parametrize("eta_min", [0.0, 0.1])
def test_torch_cosine_annealing(total, eta_min):
    ours = build_schedule("cosine_warmup", total, warmup=0, min_lr_ratio=eta_min, decay_convention="skip_end")
    assert_curve(ours, torch_curve(lr_scheduler.CosineAnnealingLR, total, T_max=total, eta_min=eta_min)[0])
    if total >= 2:  # T_max = T-1 puts the floor on the last step: our default
        ours = build_schedule("cosine_warmup", total, warmup=0, min_lr_ratio=eta_min)
        assert_curve(ours, torch_curve(lr_scheduler.CosineAnnealingLR, total, T_max=total - 1, eta_min=eta_min)[0])


@pytest.mark.parametrize("total", [1, 53, 200])
@pytest.mark.parametrize("t0,mult", [(1, 1), (7, 1), (5, 2), (3, 3), (10, 1)])
def test_torch_cosine_annealing_warm_restarts(total, t0, mult):
    ours = build_schedule("cosine_restarts", total, warmup=0, cycles=None, period=t0, period_mult=float(mult),
                          min_lr_ratio=0.05, decay_convention="skip_end")
    ref = torch_curve(lr_scheduler.CosineAnnealingWarmRestarts, total, T_0=t0, T_mult=mult, eta_min=0.05)[0]
    assert_curve(ours, ref)


ONE_CYCLE = [(53, 7), (10, 2), (10, 10), (100, 25), (2, 2), (37, 19), (1000, 300)]


@pytest.mark.parametrize(
    "total,warmup,three_phase",
    [(t, w, False) for t, w in ONE_CYCLE] + [(t, w, True) for t, w in ONE_CYCLE if 2 * w - 2 <= t - 1],
)
@pytest.mark.parametrize("anneal", ["cosine", "linear"])
def test_torch_one_cycle_lr_and_beta1(total, warmup, three_phase, anneal):
    # Three phases need 2 * warmup - 2 <= total - 1; a one-step rise divides by zero in torch.
    ours = build_schedule("one_cycle", total, warmup=warmup, three_phase=three_phase, anneal=anneal, div_factor=20.0,
                          final_div_factor=100.0, base_momentum=0.8, max_momentum=0.93)
    lrs, betas = torch_curve(
        lr_scheduler.OneCycleLR, total, lr=3e-3, max_lr=3e-3, total_steps=total, pct_start=warmup / total,
        anneal_strategy={"cosine": "cos", "linear": "linear"}[anneal], three_phase=three_phase, div_factor=20.0,
        final_div_factor=100.0, base_momentum=0.8, max_momentum=0.93, cycle_momentum=True,
    )
    assert_curve(ours, lrs, peak=3e-3)
    assert_curve(ours, betas, what="beta1")


@pytest.mark.parametrize("total,pct_start", [(53, 0.3), (53, 0.25), (100, 0.3), (7, 0.5), (1000, 0.123), (37, 0.41),
                                             (10, 0.15)])
@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("anneal", ["cosine", "linear"])
def test_torch_one_cycle_fractional_phase_end(total, pct_start, three_phase, anneal):
    # torch ends the rise at pct_start * total - 1 (53 x 0.3 - 1 = 14.9): no step is the peak.
    if three_phase and 2 * pct_start * total - 2 > total - 1:
        pytest.skip("three phases do not fit: torch itself would go past the run")
    kw = dict(div_factor=25.0, final_div_factor=1e4, base_momentum=0.85, max_momentum=0.95)
    ours = build_schedule("one_cycle", total, pct_start=pct_start, three_phase=three_phase, anneal=anneal, **kw)
    lrs, betas = torch_curve(lr_scheduler.OneCycleLR, total, lr=3e-3, max_lr=3e-3, total_steps=total,
                             pct_start=pct_start, anneal_strategy={"cosine": "cos", "linear": "linear"}[anneal],
                             three_phase=three_phase, cycle_momentum=True, **kw)
    assert_curve(ours, lrs, peak=3e-3)
    assert_curve(ours, betas, what="beta1")


def test_one_cycle_default_is_torchs_default_at_an_odd_length():
    # The shipped default (pct_start 0.3) at 53 steps: a rounded warmup of 16 steps would put the
    # peak on step 15 and differ from torch from step 1 on.
    ours = build_schedule("one_cycle", 53)
    lrs, betas = torch_curve(lr_scheduler.OneCycleLR, 53, lr=1.0, max_lr=1.0, total_steps=53)
    assert_curve(ours, lrs)
    assert_curve(ours, betas, what="beta1")
    assert max(ours(t) for t in range(53)) < 1.0


@pytest.mark.parametrize("total", [1, 10, 53])
@pytest.mark.parametrize("step_size,gamma", [(1, 0.9), (3, 0.5), (7, 0.1)])
def test_torch_step_lr(total, step_size, gamma):
    ours = build_schedule("step", total, warmup=0, step_size=step_size, gamma=gamma)
    assert_curve(ours, torch_curve(lr_scheduler.StepLR, total, step_size=step_size, gamma=gamma)[0])


@pytest.mark.parametrize("total,milestones", [(10, (3, 5)), (53, (7, 20, 52)), (53, (1,)), (2, (1,))])
def test_torch_multistep_lr(total, milestones):
    ours = build_schedule("multistep", total, warmup=0, milestones=milestones, gamma=0.3)
    assert_curve(ours, torch_curve(lr_scheduler.MultiStepLR, total, milestones=list(milestones), gamma=0.3)[0])


@pytest.mark.parametrize("total", [1, 53, 500])
@pytest.mark.parametrize("gamma", [0.99, 0.5, 1.0])
def test_torch_exponential_lr(total, gamma):
    ours = build_schedule("exponential", total, warmup=0, gamma=gamma, step_size=1)
    assert_curve(ours, torch_curve(lr_scheduler.ExponentialLR, total, gamma=gamma)[0])


@pytest.mark.parametrize("total", [1, 2, 10, 53])
@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_torch_polynomial_lr(total, power):
    ours = build_schedule("polynomial", total, warmup=0, power=power, min_lr_ratio=0.0, decay_convention="skip_end")
    assert_curve(ours, torch_curve(lr_scheduler.PolynomialLR, total, total_iters=total, power=power)[0])
    if total >= 2:  # total_iters = T-1: the floor on the last step, our default
        ours = build_schedule("polynomial", total, warmup=0, power=power, min_lr_ratio=0.0)
        assert_curve(ours, torch_curve(lr_scheduler.PolynomialLR, total, total_iters=total - 1, power=power)[0])


@pytest.mark.parametrize("up,down", [(2, None), (3, 5), (5, 2), (1, 1), (4, 0)])
@pytest.mark.parametrize("mode,gamma", [("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.97)])
def test_torch_cyclic_lr(up, down, mode, gamma):
    total = 53
    ours = build_schedule("cyclic", total, base_lr_ratio=0.1, step_size_up=up, step_size_down=down, mode=mode, gamma=gamma)
    ref = torch_curve(lr_scheduler.CyclicLR, total, lr=1.0, base_lr=0.1, max_lr=1.0, step_size_up=up,
                      step_size_down=down, mode=mode, gamma=gamma, cycle_momentum=False)[0]
    assert_curve(ours, ref)


# --------------------------------------------------------------------------------------------
# References with no installed implementation, written out from their sources
# --------------------------------------------------------------------------------------------


def deepspeed_gamma(t, total, warmup, kind, decay):
    """DeepSpeed WarmupLR / WarmupDecayLR ``_get_gamma`` at last_batch_iteration = t
    (deepspeed/runtime/lr_schedules.py): warmup_num_steps is raised to at least 2."""
    w = max(2, warmup)
    if t < w:
        return math.log(t + 1) / math.log(w) if kind == "log" else t / w
    if not decay:
        return 1.0
    return max(0.0, (total - t) / max(1.0, total - w))


def test_deepspeed_log_warmup_hand_values():
    # lr = min + (max - min) * gamma; W = 10: log(t+1)/log(10).
    assert deepspeed_gamma(0, 100, 10, "log", False) == 0.0
    assert math.isclose(deepspeed_gamma(1, 100, 10, "log", False), 0.30103, rel_tol=1e-5)
    assert math.isclose(deepspeed_gamma(9, 100, 10, "log", False), 1.0)
    assert math.isclose(deepspeed_gamma(55, 100, 10, "log", True), 0.5)


@pytest.mark.parametrize("total,warmup", [(53, 7), (10, 2), (10, 10), (100, 25), (37, 36)])
@pytest.mark.parametrize("kind", ["log", "linear"])
@pytest.mark.parametrize("min_ratio", [0.0, 0.1])
def test_deepspeed_warmup_lr_and_warmup_decay_lr(total, warmup, kind, min_ratio):
    # log warmup: 0 at step 0 and the peak at W-1 (keep_both); linear: t/W (skip_end).
    # Both decay from step W to reach warmup_min_lr at step T (skip_end).
    conv = "keep_both" if kind == "log" else "skip_end"
    common = dict(warmup=warmup, warmup_shape=kind, warmup_convention=conv, warmup_start_ratio=min_ratio)
    for decay in (False, True):
        if decay:
            ours = build_schedule("linear_warmup", total, decay_convention="skip_end", min_lr_ratio=min_ratio, **common)
        else:
            ours = build_schedule("constant_warmup", total, **common)
        ref = [min_ratio + (1 - min_ratio) * deepspeed_gamma(t, total, warmup, kind, decay) for t in range(total)]
        assert_curve(ours, ref)


class DeepSpeedScheduler:
    """DeepSpeed's WarmupLR, WarmupDecayLR and WarmupCosineLR (deepspeed/runtime/lr_schedules.py)
    written out from their source: ``step()`` moves last_batch_iteration on and writes get_lr()
    into the optimizer; the constructor writes get_lr() at last_batch_iteration = -1, which is
    the start LR for WarmupLR / WarmupDecayLR and 0 for WarmupCosineLR."""

    def __init__(self, groups, kind, total, warmup, warmup_type, *, min_lr=0.0, max_lr=1.0, cos_min_ratio=1e-4,
                 warmup_min_ratio=0.0):
        self.groups, self.kind, self.total = groups, kind, total
        self.warmup = max(2, warmup)
        self.warmup_type = warmup_type
        self.min_lr, self.max_lr, self.cos_min_ratio, self.warmup_min_ratio = min_lr, max_lr, cos_min_ratio, warmup_min_ratio
        self.org_lr = groups[0]["lr"]
        self.last_batch_iteration = -1
        self._write()

    def _ramp(self, t):
        if self.warmup_type == "log":
            return math.log(t + 1) / math.log(self.warmup)
        return t / self.warmup

    def get_lr(self):
        t = self.last_batch_iteration
        if self.kind == "cosine":
            if t < 0:
                return 0.0
            if t < self.warmup:
                return self.org_lr * (self.warmup_min_ratio + self._ramp(t) * (1.0 - self.warmup_min_ratio))
            ratio = (1 + math.cos(math.pi * (t - self.warmup + 1) / (self.total - self.warmup))) / 2
            return self.org_lr * max(0.0, self.cos_min_ratio + (1.0 - self.cos_min_ratio) * ratio)
        if t < 0:
            return self.min_lr
        if t < self.warmup:
            gamma = self._ramp(t)
        elif self.kind == "warmup":
            gamma = 1.0
        else:  # decay
            gamma = max(0.0, (self.total - t) / max(1.0, self.total - self.warmup))
        return self.min_lr + (self.max_lr - self.min_lr) * gamma

    def _write(self):
        self.groups[0]["lr"] = self.get_lr()

    def step(self):
        self.last_batch_iteration += 1
        self._write()


def deepspeed_engine_lrs(total, **kwargs):
    """The LR each update uses when DeepSpeed's engine drives the scheduler: it is built before
    training, and engine.step() runs the optimizer step, then scheduler.step()."""
    groups = [{"lr": 1.0}]
    sched = DeepSpeedScheduler(groups, total=total, **kwargs)
    used = []
    for _ in range(total):
        used.append(groups[0]["lr"])  # forward, backward, optimizer.step() with this LR
        sched.step()
    return used


def test_deepspeed_engine_runs_updates_0_and_1_at_the_start_value():
    lrs = deepspeed_engine_lrs(10, kind="warmup", warmup=4, warmup_type="linear", min_lr=0.1)
    assert lrs[:6] == [0.1, 0.1, 0.1 + 0.9 * 0.25, 0.1 + 0.9 * 0.5, 0.1 + 0.9 * 0.75, 1.0]
    assert deepspeed_engine_lrs(5, kind="cosine", warmup=2, warmup_type="linear", warmup_min_ratio=0.5)[0] == 0.0


@pytest.mark.parametrize("total,warmup", [(53, 7), (10, 2), (100, 25), (37, 36), (20, 1), (20, 0)])
@pytest.mark.parametrize("warmup_type", ["log", "linear"])
@pytest.mark.parametrize("min_ratio", [0.0, 0.1])
def test_deepspeed_as_its_engine_runs_warmup_lr_and_warmup_decay_lr(total, warmup, warmup_type, min_ratio):
    for kind, name in (("warmup", "constant_warmup"), ("decay", "linear_warmup")):
        ours = build_schedule(name, total, conventions="deepspeed", warmup=warmup, warmup_shape=warmup_type,
                              warmup_start_ratio=min_ratio)
        ref = deepspeed_engine_lrs(total, kind=kind, warmup=warmup, warmup_type=warmup_type, min_lr=min_ratio)
        assert_curve(ours, ref)
        assert ours(0) == ours(1) == min_ratio


@pytest.mark.parametrize("total,warmup", [(53, 7), (100, 25), (30, 2), (40, 0)])
@pytest.mark.parametrize("warmup_type", ["log", "linear"])
@pytest.mark.parametrize("start,floor", [(0.0, 1e-4), (0.2, 0.05)])
def test_deepspeed_as_its_engine_runs_warmup_cosine_lr(total, warmup, warmup_type, start, floor):
    ours = build_schedule("cosine_warmup", total, conventions="deepspeed", warmup=warmup, warmup_shape=warmup_type,
                          warmup_start_ratio=start, min_lr_ratio=floor)
    ref = deepspeed_engine_lrs(total, kind="cosine", warmup=warmup, warmup_type=warmup_type,
                               warmup_min_ratio=start, cos_min_ratio=floor)
    # DeepSpeed's WarmupCosineLR runs update 0 at LR 0 whatever warmup_min_ratio is (its get_lr
    # before the first step), update 1 at warmup_min_ratio; so does conventions=deepspeed.
    assert ref[0] == 0.0 and ref[1] == start
    assert_curve(ours, ref)
    check_curve(ours)
    if warmup_type == "linear":  # the linear warmup stops short of the peak and the cosine starts below it
        assert max(ref) < 1.0 and math.isclose(max(ours(t) for t in range(total)), max(ref), rel_tol=1e-12)


@pytest.mark.parametrize("start,floor", [(0.0, 0.0), (0.3, 0.1)])
def test_deepspeed_linear_warmup_floor_is_its_start_or_refused(start, floor):
    """WarmupDecayLR decays to warmup_min_lr, where it started: the floor follows the start, and a
    different floor is refused in one line (no WarmupDecayLR draws it)."""
    ours = build_schedule("linear_warmup", 40, conventions="deepspeed", warmup=5, warmup_shape="linear",
                          warmup_start_ratio=start)
    assert_curve(ours, deepspeed_engine_lrs(40, kind="decay", warmup=5, warmup_type="linear", min_lr=start))
    with pytest.raises(UserError, match=r"DeepSpeed's WarmupDecayLR decays to its warmup_min_lr, where it starts, so "
                                        r"warmup_start_ratio \(0.3\) must equal min_lr_ratio \(0.2\)"):
        build_schedule("linear_warmup", 40, conventions="deepspeed", warmup=5, warmup_start_ratio=0.3,
                       min_lr_ratio=0.2)


def test_check_curve_accepts_a_curve_that_turns_down_below_its_peak_but_not_one_still_rising():
    # DeepSpeed's linear WarmupCosineLR never reaches the peak: accepted. A warmup that the end of
    # the run cuts off is still refused.
    check_curve(build_schedule("cosine_warmup", 50, conventions="deepspeed", warmup=10, warmup_shape="linear"))
    with pytest.raises(UserError, match="never reaches its peak"):
        check_curve(build_schedule("constant_warmup", 10, warmup=10, warmup_convention="skip_end"))


def test_deepspeed_conventions_refuse_other_schedules():
    with pytest.raises(UserError, match="conventions=deepspeed reproduces DeepSpeed's WarmupLR"):
        build_schedule("wsd", 100, conventions="deepspeed")
    with pytest.raises(UserError, match="scheduler.conventions='hugging' is not a preset.*accepted: minigpt, hf, deepspeed"):
        build_schedule("wsd", 100, conventions="hugging")


# --------------------------------------------------------------------------------------------
# conventions=hf: the Hugging Face Trainer's defaults in one switch, from the shipped config files
# --------------------------------------------------------------------------------------------


def shipped(name, **overrides):
    return {**composed_scheduler(name), **overrides}


@pytest.mark.parametrize("total,warmup", [(53, 7), (100, 0), (10, 10), (600, 60)])
@pytest.mark.parametrize("hf_name,ours_name,kwargs,extra", [
    ("linear", "linear_warmup", {}, {}),
    ("cosine", "cosine_warmup", {}, {}),
    ("constant_with_warmup", "constant_warmup", {}, {}),
    ("cosine_with_restarts", "cosine_restarts", {}, {"cycles": 1}),  # HF num_cycles defaults to 1
    ("polynomial", "polynomial", {}, {"min_lr_ratio": 1e-7}),  # HF lr_end=1e-7 is absolute: 1e-7 / lr
])
def test_hf_trainer_defaults_with_conventions_hf(total, warmup, hf_name, ours_name, kwargs, extra):
    # lr_scheduler_type=<hf_name>, warmup_steps=W and nothing else, as a Trainer user writes it.
    cfg = shipped(ours_name, conventions="hf", warmup=warmup, **extra)
    ours = schedule_from_config(cfg, total, None)
    assert_curve(ours, hf_curve(hf_name, total, warmup, **kwargs))
    assert ours(0) == (0.0 if warmup else 1.0)


@pytest.mark.parametrize("total,warmup,decay", [(53, 7, 10), (100, 0, 30)])
def test_hf_warmup_stable_decay_defaults_with_conventions_hf(total, warmup, decay):
    ours = schedule_from_config(shipped("wsd", conventions="hf", warmup=warmup, decay=decay), total, None)
    assert_curve(ours, hf_curve("warmup_stable_decay", total, warmup, num_decay_steps=decay))


@pytest.mark.parametrize("total,warmup,decay", [(53, 7, 10), (100, 0, 30), (20, 10, 10), (60, 12, 0)])
@pytest.mark.parametrize("floor", [0.1, 0.35])
@pytest.mark.parametrize("warmup_type", ["linear", "cosine", "1-sqrt"])
def test_hf_warmup_stable_decay_with_a_floor_warms_up_from_the_floor(total, warmup, decay, floor, warmup_type):
    """HF's get_wsd_schedule starts its warmup at min_lr_ratio (0.1, 0.19, 0.28, ... for a floor of
    0.1 and W = 10): under conventions=hf the unset warmup_start_ratio follows the floor."""
    cfg = shipped("wsd", conventions="hf", warmup=warmup, decay=decay, min_lr_ratio=floor, warmup_shape=warmup_type)
    ours = schedule_from_config(cfg, total, None)
    assert_curve(ours, hf_curve("warmup_stable_decay", total, warmup, num_decay_steps=decay, min_lr_ratio=floor,
                                warmup_type=warmup_type))
    if warmup:
        assert ours(0) == floor


def test_hf_warmup_stable_decay_refuses_a_start_that_is_not_its_floor():
    with pytest.raises(UserError, match=r"scheduler 'wsd' with scheduler.conventions=hf: HF's get_wsd_schedule warms "
                                        r"up from its min_lr_ratio, so warmup_start_ratio \(0.0\) must equal "
                                        r"min_lr_ratio \(0.1\); leave warmup_start_ratio null"):
        schedule_from_config(shipped("wsd", conventions="hf", warmup=10, decay=10, min_lr_ratio=0.1,
                                     warmup_start_ratio=0.0), 50, None)
    # minigpt's own conventions keep the two apart.
    ours = schedule_from_config(shipped("wsd", warmup=10, decay=10, min_lr_ratio=0.3, warmup_start_ratio=0.0), 50, None)
    assert ours(0) == pytest.approx(0.1) and ours(49) == pytest.approx(0.3)  # from 0, one increment (1/10) up


def test_explicit_keys_win_over_the_preset():
    ours = schedule_from_config(shipped("cosine_warmup", conventions="hf", warmup=7, min_lr_ratio=0.1), 53, None)
    assert_curve(ours, hf_curve("cosine_with_min_lr", 53, 7, min_lr_rate=0.1))
    default = schedule_from_config(shipped("cosine_warmup", warmup=7), 53, None)
    assert default.params.min_lr_ratio == 0.1 and default.params.warmup_convention == "skip_start"
    assert default(0) == pytest.approx(1 / 7) and default(52) == pytest.approx(0.1)


def vaswani(t, warmup, d_model=512):
    """Attention Is All You Need, eq. (3): d^-0.5 * min(s^-0.5, s * W^-1.5), s = step number from 1."""
    s = t + 1
    return d_model**-0.5 * min(s**-0.5, s * warmup**-1.5)


@pytest.mark.parametrize("total,warmup", [(53, 7), (100, 1), (4000, 400), (10, 10)])
def test_vaswani_inverse_sqrt(total, warmup):
    peak = vaswani(warmup - 1, warmup)  # reached at s = W
    assert math.isclose(vaswani(15, 4) / vaswani(3, 4), 0.5)  # by hand: sqrt(4/16)
    ours = build_schedule("inverse_sqrt", total, warmup=warmup)  # project defaults, timescale = warmup
    assert_curve(ours, [vaswani(t, warmup) for t in range(total)], peak=peak)


def timm_cosine(t, t_initial, lr_min, cycle_mul, cycle_decay, warmup_t, warmup_lr_init, cycle_limit=1):
    """timm.scheduler.CosineLRScheduler._get_lr with warmup_prefix=True, base LR 1, k_decay 1
    (timm/scheduler/cosine_lr.py); cycle_limit defaults to timm's 1: no restart."""
    if t < warmup_t:
        return warmup_lr_init + t * (1.0 - warmup_lr_init) / warmup_t
    t = t - warmup_t
    if cycle_mul != 1:
        i = math.floor(math.log(1 - t / t_initial * (1 - cycle_mul), cycle_mul))
        t_i = cycle_mul**i * t_initial
        t_curr = t - (1 - cycle_mul**i) / (1 - cycle_mul) * t_initial
    else:
        i = t // t_initial
        t_i = t_initial
        t_curr = t - t_initial * i
    lr_max = cycle_decay**i
    if i >= cycle_limit:
        return lr_min
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * t_curr / t_i))


def test_timm_hand_values():
    # period 10, cycle_decay 0.5, lr_min 0: the second cycle peaks at 0.5, its middle is 0.25.
    assert timm_cosine(10, 10, 0.0, 1, 0.5, 0, 0.0, cycle_limit=2) == 0.5
    assert math.isclose(timm_cosine(15, 10, 0.0, 1, 0.5, 0, 0.0, cycle_limit=2), 0.25)
    assert math.isclose(timm_cosine(5, 10, 0.0, 1, 0.5, 0, 0.0), 0.5)
    assert timm_cosine(15, 10, 0.0, 1, 0.5, 0, 0.0) == 0.0  # timm's default cycle_limit=1: no second cycle


@pytest.mark.parametrize("total,warmup", [(53, 7), (200, 0), (200, 13)])
@pytest.mark.parametrize("period,mult,decay", [(10, 1.0, 0.5), (7, 2.0, 0.8), (5, 1.5, 1.0), (1, 1.0, 0.9)])
@pytest.mark.parametrize("cycle_limit", [1, 3, 10**6])
def test_timm_sgdr_with_cycle_decay_and_cycle_limit(total, warmup, period, mult, decay, cycle_limit):
    # timm's default cycle_limit=1 is one cosine of t_initial steps, then lr_min to the end.
    ours = build_schedule("cosine_restarts", total, warmup=warmup, cycles=None, period=period, period_mult=mult,
                          cycle_decay=decay, min_lr_ratio=0.01, warmup_start_ratio=0.001, cycle_limit=cycle_limit, **HF)
    ref = [timm_cosine(t, period, 0.01, mult, decay, warmup, 0.001, cycle_limit) for t in range(total)]
    assert_curve(ours, ref)
    if cycle_limit == 1 and warmup + period < total - 1:  # no restart: the floor after the first cycle
        assert ours(warmup + period) == ours(total - 1) == 0.01


def test_timm_log_cycle_index_misplaces_some_restarts():
    # timm finds the cycle with math.log, which lands just below an integer at some restarts
    # (cycle_mul 3, period 3: log_3(243) = 4.999...): timm puts the floor where the restart is.
    # We find the cycle by summing periods and restart on the step itself.
    ours = build_schedule("cosine_restarts", 400, warmup=0, cycles=None, period=3, period_mult=3.0,
                          min_lr_ratio=0.0, **HF)
    assert ours(363) == 1.0 and ours(362) < 1e-3
    assert timm_cosine(363, 3, 0.0, 3, 1.0, 0, 0.0, cycle_limit=100) < 1e-12


def nanogpt_lr(it, warmup_iters, lr_decay_iters, learning_rate=1.0, min_lr=0.1):
    """nanoGPT train.py get_lr (the version that warms up by (it+1)/(warmup_iters+1))."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


@pytest.mark.parametrize("max_iters,warmup", [(52, 7), (5000, 100), (10, 0), (10, 9)])
def test_nanogpt(max_iters, warmup):
    # nanoGPT runs iterations 0..max_iters inclusive with lr_decay_iters = max_iters.
    total = max_iters + 1
    ours = build_schedule("cosine_warmup", total, warmup=warmup, min_lr_ratio=0.1, warmup_convention="skip_both",
                          decay_convention="keep_both")
    assert_curve(ours, [nanogpt_lr(t, warmup, max_iters) for t in range(total)])
