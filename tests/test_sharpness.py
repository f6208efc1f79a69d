"""Sharpness (minigpt/run/sharpness.py): the largest eigenvalue of the Adam-preconditioned Hessian,
checked on quadratics whose Hessian is known (definite and indefinite), against torch's own
AdamW (bias correction and LR multipliers), and in a run."""

import math

import numpy as np
import pytest
import torch

from minigpt.errors import UserError
from minigpt.run.metrics import read_metrics
from minigpt.run.sharpness import adam_preconditioner, stability_threshold, top_eigenvalue
from minigpt.run.trainer import train


def quadratic(A):
    """loss(a, b) = 0.5 t^T A t with t = concat(a, b): two parameter tensors, Hessian A."""
    a = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(2, dtype=torch.float64, requires_grad=True)

    def loss():
        t = torch.cat([a, b])
        return 0.5 * t @ A @ t

    return loss, [a, b]


def spd(seed, n=5):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor([9.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)) @ q.T


def test_lanczos_finds_the_top_eigenvalue_of_a_known_hessian():
    A = spd(0)
    loss, params = quadratic(A)
    start = [torch.ones(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64)]
    value, vector = top_eigenvalue(loss, params, None, iters=5, init=start, tol=0.0)
    assert value == pytest.approx(9.0, rel=1e-10)  # 5 steps span the whole 5-d space: exact
    v = torch.cat(vector)
    assert abs(float(v @ torch.linalg.eigh(A).eigenvectors[:, -1])) == pytest.approx(1.0, abs=1e-8)


def test_the_largest_algebraic_eigenvalue_comes_back_not_the_largest_in_magnitude():
    """Early in training H has negative eigenvalues larger in magnitude than its top positive one;
    the sharpness is the largest algebraic eigenvalue (Cohen et al.), which here is 3, not -9."""
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    A = q @ torch.diag(torch.tensor([-9.0, 3.0, 2.0, -1.0, 0.5], dtype=torch.float64)) @ q.T
    loss, params = quadratic(A)
    start = [torch.ones(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64)]
    value, vector = top_eigenvalue(loss, params, None, iters=20, init=start)
    assert value == pytest.approx(3.0, rel=1e-6)
    assert abs(float(torch.cat(vector) @ q[:, 1])) == pytest.approx(1.0, abs=1e-6)
    # Preconditioned: the largest algebraic eigenvalue of P^-1 A, whose spectrum is indefinite too.
    d = [torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64), torch.tensor([2.0, 0.5], dtype=torch.float64)]
    eigs = np.linalg.eigvals((torch.diag(1 / torch.cat(d)) @ A).numpy()).real
    assert -eigs.min() > eigs.max() > 0
    value, _ = top_eigenvalue(loss, params, d, iters=20, init=start)
    assert value == pytest.approx(eigs.max(), rel=1e-6)


def test_lanczos_stops_at_its_tolerance_on_a_large_indefinite_spectrum():
    """400 dimensions, most negative eigenvalue -10, largest 5 (next 4.5): with a relative
    tolerance of 1e-4 on the Ritz residual the value is within 1e-4 of 5 (the residual bounds
    the error), in far fewer steps than the dimension."""
    n = 400
    g = torch.Generator().manual_seed(5)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    spectrum = torch.cat([torch.tensor([-10.0, 5.0, 4.5]), torch.linspace(-8, 4, n - 3)]).double()
    A = q @ torch.diag(spectrum) @ q.T
    w = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    products = []

    def loss():
        products.append(1)
        return 0.5 * w @ A @ w

    start = [torch.randn(n, generator=g, dtype=torch.float64)]
    value, _ = top_eigenvalue(loss, [w], None, iters=150, init=start, tol=1e-4)
    assert value == pytest.approx(5.0, rel=1e-4)
    capped, _ = top_eigenvalue(loss, [w], None, iters=3, init=start, tol=1e-4)
    assert capped < value  # 3 steps do not converge: a Ritz value is always below the top eigenvalue


def test_parameters_without_curvature_count_as_zero_rows_of_the_hessian():
    """A bias entering the loss linearly has a gradient that does not depend on the weights."""
    A = spd(3)
    loss, params = quadratic(A)
    bias = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    start = [torch.ones(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)]
    value, vector = top_eigenvalue(lambda: loss() + bias.sum(), params + [bias], None, iters=7, init=start, tol=0.0)
    assert value == pytest.approx(9.0, rel=1e-10) and vector[2].abs().max() < 1e-8


def test_the_preconditioned_eigenvalue_is_that_of_P_inverse_H():
    A = spd(1)
    loss, params = quadratic(A)
    d = [torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64), torch.tensor([2.0, 0.5], dtype=torch.float64)]
    D = torch.cat(d)
    expected = max(np.linalg.eigvals((torch.diag(1 / D) @ A).numpy()).real)
    assert expected != pytest.approx(9.0, rel=0.05)  # the preconditioner matters here
    start = [torch.ones(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64)]
    value, _ = top_eigenvalue(loss, params, d, iters=5, init=start, tol=0.0)
    assert value == pytest.approx(expected, rel=1e-10)


def adam_on_quadratic(A, steps, lr_mult=1.0):
    """AdamW (no weight decay) for `steps` updates on 0.5 t^T A t from t = 1, and its gradients."""
    loss, params = quadratic(A)
    with torch.no_grad():
        for p in params:
            p.fill_(1.0)
    opt = torch.optim.AdamW([{"params": [params[0]], "lr_mult": 1.0, "lr": 1e-3},
                             {"params": [params[1]], "lr_mult": lr_mult, "lr": 1e-3 * lr_mult}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-3, weight_decay=0.0)
    grads = []
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        grads.append(torch.cat([p.grad.detach().clone() for p in params]))
        opt.step()
    return loss, params, opt, grads


@pytest.mark.parametrize("t", [1, 10, 50])
def test_sharpness_on_a_quadratic_has_adams_first_moment_bias_correction(t):
    """P_t = (1 - beta1^t) [sqrt(v_hat_t) + eps] (Cohen et al. 2022): v_t from the gradients by
    hand here, independent of torch's state. Without the factor (1 - beta1^t) the value would be
    low by 1 / (1 - beta1^t): 10x at t = 1, 1.54x at t = 10, 1.005x at t = 50."""
    A = spd(6)
    loss, params, opt, grads = adam_on_quadratic(A, t)
    v = torch.zeros(5, dtype=torch.float64)
    for g in grads:
        v = 0.95 * v + 0.05 * g ** 2
    P = (1 - 0.9 ** t) * ((v / (1 - 0.95 ** t)).sqrt() + 1e-3)
    expected = max(np.linalg.eigvals((torch.diag(1 / P) @ A).numpy()).real)
    start = [torch.ones(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64)]
    value, _ = top_eigenvalue(loss, params, adam_preconditioner(opt, params), iters=5, init=start, tol=0.0)
    assert value == pytest.approx(expected, rel=1e-6)
    uncorrected = expected * (1 - 0.9 ** t)
    assert abs(value / uncorrected - 1) > 0.004  # the correction is measurable at t = 50 still


def test_preconditioner_is_the_denominator_of_torch_adamw_with_lr_multipliers():
    """P from the optimizer state must be what AdamW divides the schedule's LR by, in every group:
    p_new = p - lr * exp_avg / P, a group with LR multiplier c included (its P is divided by c)."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3))
    q = torch.nn.Parameter(torch.randn(3))
    lr = 0.1
    opt = torch.optim.AdamW([{"params": [p], "weight_decay": 0.0, "lr_mult": 1.0, "lr": lr},
                             {"params": [q], "weight_decay": 0.0, "lr_mult": 4.0, "lr": lr * 4.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-3)
    assert adam_preconditioner(opt, [p, q]) is None  # no second moment before the first update
    for _ in range(3):
        before = [p.detach().clone(), q.detach().clone()]
        (p.sum() ** 2 + (p * p).sum() * 3 + q.pow(3).sum()).backward()
        opt.step()
        opt.zero_grad()
    P = adam_preconditioner(opt, [p, q])
    for x, b, d in zip((p, q), before, P):
        assert torch.allclose(b - x.detach(), lr * opt.state[x]["exp_avg"] / d, rtol=1e-5, atol=1e-7)
    assert P[1].shape == q.shape


@pytest.mark.parametrize("name", ["muon", "schedule_free"])
def test_sharpness_refuses_an_optimizer_without_adams_preconditioner(make_config, name):
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(UserError, match="the optimizer is SGD; use optim=adamw"):
        adam_preconditioner(torch.optim.SGD([p], lr=0.1), [p])
    with pytest.raises(UserError, match=f"monitor.sharpness_every measures .* which optim={name} does not keep for "
                                        "every weight: use optim=adamw"):
        make_config(optim__name=name, monitor__sharpness_every=5, scheduler__name="constant_warmup")
    make_config(optim__name=name, scheduler__name="constant_warmup")  # without the sharpness: accepted


def test_threshold_is_cohen_et_al_for_adam():
    assert stability_threshold(1e-2, 0.9) == pytest.approx(3800.0)
    assert stability_threshold(1e-3, 0.0) == pytest.approx(2000.0)  # beta1 = 0: the 2 / lr of gradient descent
    assert stability_threshold(0.0, 0.9) == math.inf  # conventions=deepspeed's cosine runs update 0 at LR 0


def test_adam_on_a_quadratic_is_unstable_exactly_above_the_threshold():
    """The threshold is the one that matters: with a frozen preconditioner (beta2 -> 1), Adam's
    iterates on 0.5 t^T A t grow when lr x lambda_max(P^-1 A) > (2 + 2 beta1) / (1 - beta1)."""
    A = spd(2)
    lam = 9.0
    beta1 = 0.9
    for factor, grows in ((0.9, False), (1.1, True)):
        lr = factor * stability_threshold(1.0, beta1) / lam
        t = torch.ones(5, dtype=torch.float64)
        m = torch.zeros(5, dtype=torch.float64)
        for _ in range(1000):  # heavy-ball form of Adam with P = I (no bias correction: its fixed point)
            m = beta1 * m + (1 - beta1) * (A @ t)
            t = t - lr * m
        grew = not bool(t.norm() < 1e3)  # overflowing to inf or nan counts as growing
        assert grew == grows and (grows or t.norm() < 1e-3), (factor, float(t.norm()))


@pytest.mark.slow
def test_a_run_records_sharpness_every_n_steps_without_changing_the_training(make_config, tmp_path):
    base = train(make_config(trainer__max_steps=10), tmp_path / "off", quiet=True)
    cfg = make_config(trainer__max_steps=10, monitor__sharpness_every=3, monitor__sharpness_iters=10)
    on = train(cfg, tmp_path / "on", quiet=True)
    off_records = [r for r in read_metrics(tmp_path / "off") if "train/loss" in r]
    on_records = [r for r in read_metrics(tmp_path / "on") if "train/loss" in r]
    assert [r["train/loss"] for r in on_records] == [r["train/loss"] for r in off_records]
    assert on.final_val_loss == base.final_val_loss
    measured = {r["step"]: r for r in on_records if "train/sharpness" in r}
    assert sorted(measured) == [0, 3, 6, 9]
    for r in measured.values():
        assert math.isfinite(r["train/sharpness"]) and r["train/sharpness"] > 0  # the largest algebraic one
        assert r["train/sharpness_threshold"] == pytest.approx(stability_threshold(r["train/lr"], 0.9))
    assert not any("train/sharpness" in r for r in off_records)
    until = train(make_config(trainer__max_steps=10, monitor__sharpness_every=2, monitor__sharpness_iters=2,
                              monitor__sharpness_until=5), tmp_path / "until", quiet=True)
    assert until.status == "completed"
    assert [r["step"] for r in read_metrics(tmp_path / "until") if "train/sharpness" in r] == [0, 2, 4]


@pytest.mark.parametrize("value, text", [
    (0, "monitor.sharpness_every must be a positive number of steps"),
    (-5, "monitor.sharpness_every must be a positive number of steps"),
    ("often", "monitor.sharpness_every: expected an integer"),
    (2.5, "monitor.sharpness_every: expected an integer"),
])
def test_sharpness_interval_must_be_a_positive_integer(make_config, value, text):
    with pytest.raises(UserError, match=text.replace(".", r"\.")):
        make_config(monitor__sharpness_every=value)
