"""Sharpness: the top eigenvalue of the Adam-preconditioned Hessian of the training loss.

Cohen et al. 2022 ("Adaptive gradient methods at the edge of stability") show that Adam with
LR eta, momentum beta1 and preconditioner P = diag(sqrt(v_hat) + eps) is stable on a quadratic
only while the largest eigenvalue of P^-1 H stays below

    (2 + 2 beta1) / ((1 - beta1) eta)        (38 / eta for beta1 = 0.9)

and that training drives it up to that threshold. Kalra & Barkeshli 2024 explain warmup as the
time it gives the sharpness to come down under the threshold before the LR is high. With
`monitor.sharpness_every=N` the trainer measures this eigenvalue every N steps and records it
as `train/sharpness`, next to the threshold at that step's LR (`train/sharpness_threshold`).

How: P^-1 H is similar to the symmetric S = P^-1/2 H P^-1/2, so both have the same
eigenvalues. A few power-iteration steps on S, each one Hessian-vector product
(double backward through the loss), estimate its eigenvalue of largest magnitude; the value is
the Rayleigh quotient v.Sv of the last iterate. The loss is that of one fixed training batch,
so successive values differ only because the weights and the preconditioner changed. The
iteration starts from the previous call's eigenvector (from a seeded random vector the first
time), so a few steps suffice once training is under way. The measurement never touches the
training RNG, the gradients or the optimizer state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch


def stability_threshold(lr: float, beta1: float) -> float:
    """Cohen et al. 2022's bound for Adam: (2 + 2 beta1) / ((1 - beta1) lr)."""
    return (2 + 2 * beta1) / ((1 - beta1) * lr)


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    """sqrt(v_hat) + eps per parameter, as torch's Adam/AdamW divides by it in its last update;
    None before the first update (there is no second-moment estimate yet)."""
    out = []
    for group in optimizer.param_groups:
        beta2, eps = group["betas"][1], group["eps"]
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state or "exp_avg_sq" not in state:
                return None
            step = float(state["step"])
            bias_correction = 1 - beta2 ** step
            out.append((p, (state["exp_avg_sq"] / bias_correction).sqrt() + eps))
    by_param = {id(p): d for p, d in out}
    return [by_param[id(p)] for p in params]


def top_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                   preconditioner: Sequence[torch.Tensor] | None, iters: int,
                   init: Sequence[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    """Power iteration on P^-1/2 H P^-1/2 (H: the Hessian of loss_fn() in params; P: the diagonal
    preconditioner, None for the identity). Returns the Rayleigh quotient of the last iterate
    and that iterate (unit norm), to start the next call from."""
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    # A gradient that does not depend on the weights (e.g. of a bias feeding the loss linearly) has
    # no second derivative: its rows of H are zero.
    curved = [i for i, g in enumerate(grads) if g.requires_grad]
    scale = [d.rsqrt() for d in preconditioner] if preconditioner is not None else [None] * len(params)
    v = _normalised(init)
    eigenvalue = 0.0
    for i in range(iters):
        u = [x * s if s is not None else x for x, s in zip(v, scale)]  # P^-1/2 v
        hu = torch.autograd.grad([grads[k] for k in curved], params, grad_outputs=[u[k] for k in curved],
                                 retain_graph=i < iters - 1, allow_unused=True)
        hu = [h if h is not None else torch.zeros_like(p) for h, p in zip(hu, params)]
        sv = [h * s if s is not None else h for h, s in zip(hu, scale)]  # P^-1/2 H P^-1/2 v
        eigenvalue = float(sum((a * b).sum() for a, b in zip(v, sv)))
        v = _normalised(sv)
    return eigenvalue, [x.detach() for x in v]


def _normalised(vectors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    norm = torch.sqrt(sum((x.float() ** 2).sum() for x in vectors))
    if not torch.isfinite(norm) or norm == 0:  # a dead direction (or non-finite weights): keep going from ones
        return [torch.ones_like(x) / max(1, sum(y.numel() for y in vectors)) ** 0.5 for x in vectors]
    return [x.detach() / norm for x in vectors]


class SharpnessProbe:
    """Measures the preconditioned sharpness of one model every `every` steps on one fixed batch.

    `batch` is (inputs, targets); `model(x, y)` must return (logits, loss). The model runs in
    eval mode (no dropout) with the math attention kernel, whose backward is differentiable
    twice, and in full precision (no autocast, TF32 off).
    """

    def __init__(self, every: int, iters: int, batch: tuple[torch.Tensor, torch.Tensor], seed: int = 0,
                 until: int | None = None):
        self.every, self.iters, self.batch, self.until = every, iters, batch, until
        self.seed = seed
        self.vector: list[torch.Tensor] | None = None

    def due(self, step: int) -> bool:
        return step % self.every == 0 and (self.until is None or step < self.until)

    def measure(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
        params = [p for p in model.parameters() if p.requires_grad]
        preconditioner = adam_preconditioner(optimizer, params)
        if self.vector is None:
            gen = torch.Generator(device="cpu").manual_seed(self.seed)
            self.vector = [torch.randn(p.shape, generator=gen).to(p.device, p.dtype) for p in params]
        x, y = self.batch
        was_training = model.training
        model.eval()
        try:
            with _math_attention(x.device), _full_fp32_matmuls():
                value, self.vector = top_eigenvalue(lambda: model(x, y)[1].float(), params, preconditioner,
                                                    self.iters, self.vector)
        finally:
            model.train(was_training)
        return value


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
