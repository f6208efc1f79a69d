"""The optimizers (optim.name) and their parameter groups (the global-batch LR scaling rule is in
minigpt/plan.py; docs/optimizers.md says what each does and where it comes from).

    adamw          torch's AdamW; weight decay on matrices and embeddings only
    muon           torch.optim.Muon on the hidden weight matrices (attention and MLP), AdamW on the
                   embeddings (the head is tied to them), norms and biases (MuonWithAdamW)
    schedule_free  schedule-free AdamW (the schedulefree package): the weights it trains at (y)
                   are not the ones it should be evaluated at (x); `eval_point` switches

optim.adam_init=grad (GI-Adam) starts Adam's second moment at the first gradient's square
(`init_second_moment`, called by the stepper before the first update); optim.ema is kept by
`WeightAverage`. The plan (plan.apply) writes every group's LR (the schedule's x the group's
"lr_mult") and Muon's momentum before each update; nothing here changes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import schedulefree
import torch

from minigpt.config import OptimConfig
from minigpt.errors import UserError

# Optimizers torch ships no fused kernel for: under fp16, GradScaler.step reads the found-inf
# flag back to the host at every step before it calls them (a sync the fused AdamW avoids).
NOT_FUSED = ("muon", "schedule_free")


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device,
                    peak_lr: float | None = None, adam: tuple[float, float, float] | None = None):
    """The optimizer optim.name names, over the model's parameter groups.

    AdamW and schedule-free AdamW: two groups, matrices and embeddings decay, biases and norm
    gains do not. Decaying a LayerNorm gain pulls it towards 0 rather than towards its neutral
    value 1, and a bias has no scale to regularise, hence the split (as in GPT-2 and nanoGPT).
    With optim.lr_multipliers set, the decaying group is split into "embedding" (wte, wpe, and
    lm_head when it is not tied) and "matrices", and the other is "norms_biases"; each group
    carries its "lr_mult", which the plan applies on top of the schedule's LR. Muon always has
    those groups: "matrices" is Muon's, the others AdamW's.
    peak_lr: the LR the schedule multiplies (default optim.lr); the independent weight decay
    is expressed against it (decay_coefficient). adam: (beta1, beta2, eps), default the config's
    (the run plan passes them after the batch-size scaling rule).
    """
    peak = peak_lr if peak_lr is not None else cfg.lr
    beta1, beta2, eps = adam if adam is not None else (cfg.beta1, cfg.beta2, cfg.eps)
    if cfg.name == "muon":
        groups = param_groups(model, cfg, peak, split=True)
        hidden = [g for g in groups if g["name"] == "matrices"]
        rest = [g for g in groups if g["name"] != "matrices"]
        mu = cfg.muon
        muon = torch.optim.Muon(hidden, lr=cfg.lr, weight_decay=hidden[0]["weight_decay"], momentum=mu.momentum,
                                nesterov=mu.nesterov, ns_steps=mu.ns_steps, adjust_lr_fn=mu.adjust_lr)
        adamw = torch.optim.AdamW(rest, lr=cfg.lr, betas=(beta1, beta2), eps=eps, fused=_fused(cfg, device))
        return MuonWithAdamW(muon, adamw)
    groups = param_groups(model, cfg, peak, split=cfg.lr_multipliers.non_default())
    if cfg.name == "schedule_free":
        # warmup_steps=0: the plan's schedule (constant or constant_warmup) writes each step's LR, and
        # the averaging weights follow the largest LR so far (lr_max), as its own warmup would.
        optimizer = schedulefree.AdamWScheduleFree(groups, lr=cfg.lr, betas=(beta1, beta2), eps=eps, warmup_steps=0)
        optimizer.train()  # it refuses to step in eval mode
        return optimizer
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(beta1, beta2), eps=eps, fused=_fused(cfg, device))


def param_groups(model: torch.nn.Module, cfg: OptimConfig, peak: float, split: bool) -> list[dict]:
    """The parameter groups, each with its "name", "lr_mult" and "weight_decay" (see build_optimizer)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # tied weights appear once
    if not split:
        return [
            {"params": [p for _, p in named if p.dim() >= 2], "weight_decay": decay_coefficient(cfg, peak),
             "name": "decay", "lr_mult": 1.0},
            {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0, "name": "no_decay", "lr_mult": 1.0},
        ]
    m = cfg.lr_multipliers
    groups = []
    for name in ("embedding", "head", "matrices", "norms_biases"):
        params = [p for n, p in named if param_kind(n, p) == name]
        if not params:
            continue  # the head, when it is the token embedding
        mult = getattr(m, name)
        decays = name != "norms_biases" and mult > 0
        groups.append({"params": params, "name": name, "lr_mult": mult,
                       "weight_decay": decay_coefficient(cfg, peak * mult) if decays else 0.0})
    return groups


def param_kind(name: str, p: torch.Tensor) -> str:
    """Which group a parameter belongs to: embedding, head, matrices (the hidden 2-D weights of
    attention and MLP: Muon's) or norms_biases (every 1-D parameter)."""
    if p.dim() < 2:
        return "norms_biases"
    if name.startswith(("transformer.wte.", "transformer.wpe.")):
        return "embedding"
    return "head" if name.startswith("lm_head.") else "matrices"


def _fused(cfg: OptimConfig, device: torch.device) -> bool:
    return cfg.fused == "on" or (cfg.fused == "auto" and device.type == "cuda")


class MuonWithAdamW:
    """Muon on the hidden matrices and AdamW on the other parameters, stepped as one optimizer.

    It offers what the run uses of an optimizer: param_groups (Muon's first; plan.apply writes
    their LRs and Muon's momentum), step, zero_grad, state_dict and load_state_dict (one dict
    holding each optimizer's). Under fp16 it is refused (check_precision): GradScaler would read
    its found-inf flag back at every step."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def adam_part(optimizer) -> torch.optim.AdamW | None:
    """The AdamW among the run's optimizers (Muon's companion, or the optimizer itself)."""
    if isinstance(optimizer, MuonWithAdamW):
        return optimizer.adamw
    return optimizer if isinstance(optimizer, torch.optim.AdamW) else None


def is_schedule_free(optimizer) -> bool:
    return isinstance(optimizer, schedulefree.AdamWScheduleFree)


def check_precision(cfg: OptimConfig, precision: str) -> None:
    """fp16 with an optimizer torch ships no fused kernel for is refused: GradScaler.step reads the
    found-inf flag back to the host before every step of such an optimizer, a sync per step that
    the fused AdamW avoids (the GPU rules in docs/optimizers.md)."""
    if precision == "fp16" and cfg.name in NOT_FUSED:
        raise UserError(f"trainer.precision=fp16 with optim={cfg.name}: torch has no fused {cfg.name}, so the fp16 "
                        "loss scaler would read a value back from the GPU at every step; use trainer.precision=bf16 "
                        "or fp32, or optim=adamw")


@torch.no_grad()
def init_second_moment(optimizer) -> None:
    """GI-Adam (Kalra & Barkeshli 2024, "Why Warmup the Learning Rate?"): before the first update,
    Adam's second moment v_0 is the first gradient's square instead of 0. Adam's recursion
    v_t = beta2 v_{t-1} + (1 - beta2) g_t^2 and torch's bias corrections are kept, so after the
    first update v_1 = g_1^2 (plain Adam: (1 - beta2) g_1^2). Call it after clipping (the
    gradient Adam sees), before the first optimizer.step(); parameters that already have a state
    (a resumed run) are left alone. The state is built through load_state_dict, so torch puts
    every part (the step counter of a fused AdamW included) where it wants it."""
    adamw = adam_part(optimizer)
    if adamw is None:
        return
    saved = adamw.state_dict()
    index = 0
    for group in adamw.param_groups:
        for p in group["params"]:
            if p.grad is not None and not adamw.state.get(p):
                square = torch.nan_to_num(p.grad * p.grad, nan=0.0, posinf=0.0)  # an fp16 overflow step: plain Adam
                saved["state"][index] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                         "exp_avg_sq": square}
            index += 1
    adamw.load_state_dict(saved)


@contextlib.contextmanager
def eval_point(optimizer, params: Sequence[torch.Tensor]) -> Iterator[list[torch.Tensor] | None]:
    """Inside, the parameters are at the point the optimizer should be evaluated and saved at;
    after, exactly where training left them. For schedule-free AdamW that is its average x
    (optimizer.eval()); the training point y is kept and copied back bit for bit afterwards,
    since eval() then train() would round it (and an evaluation must not move training). Yields
    the training point (None for other optimizers): a checkpoint stores it to resume exactly."""
    if not is_schedule_free(optimizer):
        yield None
        return
    train_point = [p.detach().clone() for p in params]
    optimizer.eval()
    try:
        yield train_point
    finally:
        optimizer.train()
        with torch.no_grad():
            torch._foreach_copy_(list(params), train_point)


def decay_coefficient(cfg: OptimConfig, peak_lr: float) -> float:
    """The weight_decay to give torch's AdamW (or Muon, or schedule-free AdamW), which multiply the
    weights by 1 - lr_t * wd each step.

    coupled: wd = optim.weight_decay, so the decay per step scales with the LR.
    independent: wd = optim.weight_decay / peak_lr, so lr_t * wd = s_t * optim.weight_decay with
    s_t = lr_t / peak_lr the schedule's multiplier: the decay follows the schedule's shape but
    not the peak LR (Loshchilov & Hutter 2019, as Wortsman et al. 2023 use it). For a group with an
    LR multiplier, peak_lr is the group's own peak (the run's peak x the multiplier).
    """
    if cfg.weight_decay_mode == "independent":
        return cfg.weight_decay / peak_lr
    return cfg.weight_decay


def group_names(saved: dict) -> list:
    """The parameter groups' names of a saved optimizer state (either kind of state_dict)."""
    parts = [saved["muon"], saved["adamw"]] if "muon" in saved else [saved]
    return [g.get("name") for part in parts for g in part["param_groups"]]


def load_optimizer_state(optimizer, saved: dict, path, params: Sequence[torch.Tensor] = (),
                         train_point: Sequence[torch.Tensor] | None = None) -> None:
    """A checkpoint's optimizer state, into an optimizer of the same groups; each group keeps this
    run's LR multiplier (optim.lr_multipliers may change on a resume, the groups may not).
    Schedule-free AdamW was saved at its evaluation point: it goes back to training mode, and the
    parameters to the saved training point (`train_point`), bit for bit."""
    saved_groups, groups = group_names(saved), [g["name"] for g in optimizer.param_groups]
    if saved_groups != groups:
        raise UserError(f"trainer.resume: {path} has optimizer groups {saved_groups}, this run {groups} "
                        "(optim.lr_multipliers set or unset since); resume with the multipliers it was trained with")
    multipliers = [g["lr_mult"] for g in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, mult in zip(optimizer.param_groups, multipliers):  # this run's, not the checkpoint's
        group["lr_mult"] = mult
    if is_schedule_free(optimizer):
        optimizer.train()
        if train_point is not None:
            with torch.no_grad():
                torch._foreach_copy_(list(params), [t.to(p.device) for p, t in zip(params, train_point)])


class WeightAverage:
    """optim.ema: an exponential moving average of the weights, on their device.

    After every update e <- decay e + (1 - decay) w, decay = 0.5 ** (1 / half-life steps), with e
    the initial weights before the first update (no bias correction: a half-life shorter than the
    run, which the plan requires, forgets them). One fused lerp over all tensors, no host sync."""

    def __init__(self, params: Sequence[torch.Tensor], decay: float):
        self.params, self.decay = list(params), decay
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def restart(self) -> None:
        """Start the average again from the current weights (a resume from a checkpoint without one)."""
        torch._foreach_copy_(self.average, [p.detach() for p in self.params])

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The average in the model's parameters inside (to evaluate it), the weights back after."""
        with torch.no_grad():
            kept = [p.detach().clone() for p in self.params]
            torch._foreach_copy_(self.params, self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, kept)

    def state_dict(self) -> list[torch.Tensor]:
        return [a.clone() for a in self.average]

    def load_state_dict(self, saved: Sequence[torch.Tensor]) -> None:
        if len(saved) != len(self.average) or any(s.shape != a.shape for s, a in zip(saved, self.average)):
            raise UserError("trainer.resume: the checkpoint's weight average (optim.ema) does not fit this model")
        with torch.no_grad():
            torch._foreach_copy_(self.average, [s.to(a.device) for s, a in zip(saved, self.average)])
