"""Sharpness: the largest eigenvalue of the Adam-preconditioned Hessian of the training loss.

Cohen et al. 2022 ("Adaptive gradient methods at the edge of stability", section 2) write Adam
as preconditioned heavy ball: m_t = beta1 m_{t-1} + (1 - beta1) g_t, w_t = w_{t-1} - eta P_t^-1 m_t
with P_t = (1 - beta1^t) [diag(sqrt(v_hat_t)) + eps], where the factor (1 - beta1^t) is the first
moment's bias correction (torch's Adam and AdamW divide the step by it too). On a quadratic this
is stable only while the largest eigenvalue of P_t^-1 H stays below

    (2 + 2 beta1) / ((1 - beta1) eta)        (38 / eta for beta1 = 0.9)

and training drives it up to that threshold. Kalra & Barkeshli 2024 explain warmup as the
time it gives the sharpness to come down under the threshold before the LR is high. With
`monitor.sharpness_every=N` the trainer measures this eigenvalue every N steps and records it
as `train/sharpness`, next to the threshold at that step's LR (`train/sharpness_threshold`).

Per-group LR multipliers (optim.lr_multipliers): a group whose LR is eta x c takes the step
eta (P_t / c)^-1 m_t, so its rows of P are divided by c and the threshold stays that of the
schedule's LR eta, the LR the records carry.

How: P^-1 H is similar to the symmetric S = P^-1/2 H P^-1/2, so both have the same
eigenvalues, and Cohen et al. track the largest *algebraic* one (not the largest in magnitude:
early in training H has negative eigenvalues larger in magnitude than its top positive one).
A Lanczos iteration on S finds it: each step one Hessian-vector product (a double backward
through the loss), with full reorthogonalisation, and the largest eigenvalue of the small
tridiagonal matrix it builds (the Ritz value) as the estimate. It stops after `iters` steps, or
earlier once the Ritz residual |beta_k s_k| (a bound on the distance from the Ritz value to an
eigenvalue of S) is at most `tol` times the value. **Cost per measurement**: one forward and
backward pass that keeps its graph, then at most `iters` Hessian-vector products (each about
two backward passes), and `iters` vectors of the parameter count in memory. The loss is that of
one fixed training batch, so successive values differ only because the weights and the
preconditioner changed. The iteration starts from the previous call's Ritz vector plus a fresh
seeded random vector (the random part keeps a direction that has newly become the top one from
being missed). The measurement never touches the training RNG, the gradients or the optimizer
state.

Hand-written rather than scipy's eigsh (ARPACK): the vectors stay on the model's device as
torch tensors, and the number of Hessian-vector products per measurement has a fixed bound.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch

from minigpt.errors import UserError

# Only Adam's preconditioner is known here. Another optimizer (Muon, schedule-free, ...) needs its
# own P before its sharpness means anything: the config refuses monitor.sharpness_every for it
# (config.SHARPNESS_OPTIMIZERS, checked in Config.validate) and adam_preconditioner refuses it too.


def stability_threshold(lr: float, beta1: float) -> float:
    """Cohen et al. 2022's bound for Adam: (2 + 2 beta1) / ((1 - beta1) lr); infinite at LR 0
    (DeepSpeed's WarmupCosineLR runs its first update there)."""
    return (2 + 2 * beta1) / ((1 - beta1) * lr) if lr > 0 else math.inf


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    """P_t = (1 - beta1^t) [sqrt(v_hat_t) + eps] / c per parameter (c: its group's "lr_mult", 1
    without one), so that torch's Adam/AdamW step of its last update was lr x exp_avg / P_t with
    lr the schedule's LR; None before the first update (there is no second-moment estimate yet)."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise UserError(f"monitor.sharpness_every: the sharpness needs Adam's preconditioner, and the optimizer is "
                        f"{type(optimizer).__name__}; use optim=adamw or monitor.sharpness_every=null")
    out = []
    for group in optimizer.param_groups:
        (beta1, beta2), eps, mult = group["betas"], group["eps"], group.get("lr_mult", 1.0)
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state or "exp_avg_sq" not in state:
                return None
            step = float(state["step"])
            v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
            denom = (v / (1 - beta2 ** step)).sqrt() + eps
            out.append((p, (1 - beta1 ** step) * denom / mult if mult > 0 else torch.full_like(denom, math.inf)))
    by_param = {id(p): d for p, d in out}
    return [by_param[id(p)] for p in params]


def top_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                   preconditioner: Sequence[torch.Tensor] | None, iters: int,
                   init: Sequence[torch.Tensor], tol: float = 1e-3) -> tuple[float, list[torch.Tensor]]:
    """The largest algebraic eigenvalue of P^-1/2 H P^-1/2 (H: the Hessian of loss_fn() in params;
    P: the diagonal preconditioner, None for the identity; an infinite entry freezes its
    coordinate) by at most `iters` Lanczos steps from `init`, stopping once the Ritz residual is at
    most tol x |value|. Returns the value and its Ritz vector (unit norm), to start the next call
    from; NaN (and `init`) when the loss or a product is not finite."""
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    # A gradient that does not depend on the weights (e.g. of a bias feeding the loss linearly) has
    # no second derivative: its rows of H are zero.
    curved = [i for i, g in enumerate(grads) if g.requires_grad]
    scale = [d.rsqrt() for d in preconditioner] if preconditioner is not None else [None] * len(params)
    sizes = [p.numel() for p in params]

    def apply(q: torch.Tensor) -> torch.Tensor:  # S q, on flat vectors
        v = [x.view_as(p) for x, p in zip(q.split(sizes), params)]
        u = [x * s if s is not None else x for x, s in zip(v, scale)]  # P^-1/2 q
        hu = torch.autograd.grad([grads[k] for k in curved], params, grad_outputs=[u[k] for k in curved],
                                 retain_graph=True, allow_unused=True)
        hu = [h if h is not None else torch.zeros_like(p) for h, p in zip(hu, params)]
        return torch.cat([(h * s if s is not None else h).reshape(-1) for h, s in zip(hu, scale)])

    start = torch.cat([x.detach().reshape(-1).to(params[0].dtype) for x in init])
    q = _unit(start)
    basis: list[torch.Tensor] = []  # the Lanczos vectors q_1 .. q_k
    alphas: list[float] = []
    betas: list[float] = []
    theta, ritz = math.nan, None
    for _ in range(iters):
        basis.append(q)
        w = apply(q)
        alpha = float(q @ w)
        if not math.isfinite(alpha):
            return math.nan, list(init)
        Q = torch.stack(basis)
        w = w - Q.T @ (Q @ w)  # full reorthogonalisation against q_1 .. q_k (this removes alpha q_k
        w = w - Q.T @ (Q @ w)  # and beta q_k-1 too); twice, which is enough in floating point
        beta = float(w.norm())
        alphas.append(alpha)
        T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            T += torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors = torch.linalg.eigh(T)
        theta, ritz = float(values[-1]), vectors[:, -1]
        if not math.isfinite(beta) or beta * abs(float(ritz[-1])) <= tol * abs(theta):
            break  # converged (or S's Krylov space is exhausted: beta = 0)
        betas.append(beta)
        q = w / beta
    vector = torch.stack(basis).T @ ritz.to(basis[0].device, basis[0].dtype)  # T is solved on the host
    vector = [x.view_as(p).detach() for x, p in zip(_unit(vector).split(sizes), params)]
    return theta, vector


def _unit(x: torch.Tensor) -> torch.Tensor:
    norm = x.norm()
    if not torch.isfinite(norm) or norm == 0:  # a dead direction (or non-finite weights): start from ones
        return torch.ones_like(x) / x.numel() ** 0.5
    return x / norm


class SharpnessProbe:
    """Measures the preconditioned sharpness of one model every `every` steps on one fixed batch.

    `batch` is (inputs, targets); `model(x, y)` must return (logits, loss). The model runs in
    eval mode (no dropout) with the math attention kernel, whose backward is differentiable
    twice, and in full precision (no autocast, TF32 off). At most `iters` Hessian-vector products
    per measurement (fewer once the Ritz residual is under `tol` x the value).
    """

    def __init__(self, every: int, iters: int, batch: tuple[torch.Tensor, torch.Tensor], seed: int = 0,
                 until: int | None = None, tol: float = 1e-3):
        self.every, self.iters, self.batch, self.until, self.tol = every, iters, batch, until, tol
        self.generator = torch.Generator(device="cpu").manual_seed(seed)  # the start vectors' own RNG
        self.vector: list[torch.Tensor] | None = None

    def due(self, step: int) -> bool:
        return step % self.every == 0 and (self.until is None or step < self.until)

    def measure(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
        params = [p for p in model.parameters() if p.requires_grad]
        preconditioner = adam_preconditioner(optimizer, params)
        fresh = [torch.randn(p.shape, generator=self.generator).to(p.device, p.dtype) for p in params]
        start = fresh if self.vector is None else _sum_of_units(self.vector, fresh)
        x, y = self.batch
        was_training = model.training
        model.eval()
        try:
            with _math_attention(x.device), _full_fp32_matmuls():
                value, vector = top_eigenvalue(lambda: model(x, y)[1].float(), params, preconditioner,
                                               self.iters, start, self.tol)
        finally:
            model.train(was_training)
        if math.isfinite(value):
            self.vector = vector
        return value


def _sum_of_units(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """a / |a| + b / |b|, over the lists as one vector each."""
    na = torch.sqrt(sum((x.float() ** 2).sum() for x in a))
    nb = torch.sqrt(sum((x.float() ** 2).sum() for x in b))
    return [x / na + y / nb for x, y in zip(a, b)]


@contextlib.contextmanager
def _full_fp32_matmuls():
    """TF32 off for the measurement, as it was afterwards. On CUDA the runtime turns TF32 on for
    training's leftover fp32 matmuls; its 10-bit mantissa would blur Hessian-vector products
    whose differences are what the power iteration measures. (Flags only: a no-op on a CPU.)"""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _math_attention(device: torch.device):
    """The fused attention kernels have no double backward; the math kernel does."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # older torch: every kernel it has on CPU is the math one
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])
