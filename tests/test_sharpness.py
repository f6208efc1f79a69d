"""Sharpness (minigpt/run/sharpness.py): the top eigenvalue of the Adam-preconditioned Hessian,
checked on quadratics whose Hessian is known, against torch's own AdamW, and in a run."""

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


def test_power_iteration_finds_the_top_eigenvalue_of_a_known_hessian():
    A = spd(0)
    loss, params = quadratic(A)
    start = [torch.ones(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64)]
    value, vector = top_eigenvalue(loss, params, None, iters=60, init=start)
    assert value == pytest.approx(9.0, rel=1e-6)
    v = torch.cat(vector)
    assert abs(float(v @ torch.linalg.eigh(A).eigenvectors[:, -1])) == pytest.approx(1.0, abs=1e-6)


def test_parameters_without_curvature_count_as_zero_rows_of_the_hessian():
    """A bias entering the loss linearly has a gradient that does not depend on the weights."""
    A = spd(3)
    loss, params = quadratic(A)
    bias = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    start = [torch.ones(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)]
    value, vector = top_eigenvalue(lambda: loss() + bias.sum(), params + [bias], None, iters=60, init=start)
    assert value == pytest.approx(9.0, rel=1e-6) and vector[2].abs().max() < 1e-6


def test_the_preconditioned_eigenvalue_is_that_of_P_inverse_H():
    A = spd(1)
    loss, params = quadratic(A)
    d = [torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64), torch.tensor([2.0, 0.5], dtype=torch.float64)]
    D = torch.cat(d)
    expected = max(np.linalg.eigvals((torch.diag(1 / D) @ A).numpy()).real)
    assert expected != pytest.approx(9.0, rel=0.05)  # the preconditioner matters here
    start = [torch.ones(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64)]
    value, _ = top_eigenvalue(loss, params, d, iters=200, init=start)
    assert value == pytest.approx(expected, rel=1e-5)


def test_preconditioner_is_the_denominator_of_torch_adamw():
    """P from the optimizer state must be what AdamW divides by: p_new = p - lr * m_hat / P."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3))
    q = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([{"params": [p], "weight_decay": 0.0}, {"params": [q], "weight_decay": 0.0}],
                            lr=0.1, betas=(0.9, 0.95), eps=1e-3)
    assert adam_preconditioner(opt, [p, q]) is None  # no second moment before the first update
    for _ in range(3):
        before = p.detach().clone()
        (p.sum() ** 2 + (p * p).sum() * 3 + q.pow(3).sum()).backward()
        opt.step()
        opt.zero_grad()
    P = adam_preconditioner(opt, [p, q])
    m_hat = opt.state[p]["exp_avg"] / (1 - 0.9 ** 3)
    assert torch.allclose(before - p.detach(), 0.1 * m_hat / P[0], rtol=1e-5, atol=1e-7)
    assert P[1].shape == q.shape


def test_threshold_is_cohen_et_al_for_adam():
    assert stability_threshold(1e-2, 0.9) == pytest.approx(3800.0)
    assert stability_threshold(1e-3, 0.0) == pytest.approx(2000.0)  # beta1 = 0: the 2 / lr of gradient descent


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


def test_a_run_records_sharpness_every_n_steps_without_changing_the_training(make_config, tmp_path):
    base = train(make_config(trainer__max_steps=10), tmp_path / "off", quiet=True)
    cfg = make_config(trainer__max_steps=10, monitor__sharpness_every=3, monitor__sharpness_iters=4)
    on = train(cfg, tmp_path / "on", quiet=True)
    off_records = [r for r in read_metrics(tmp_path / "off") if "train/loss" in r]
    on_records = [r for r in read_metrics(tmp_path / "on") if "train/loss" in r]
    assert [r["train/loss"] for r in on_records] == [r["train/loss"] for r in off_records]
    assert on.final_val_loss == base.final_val_loss
    measured = {r["step"]: r for r in on_records if "train/sharpness" in r}
    assert sorted(measured) == [0, 3, 6, 9]
    for r in measured.values():
        assert math.isfinite(r["train/sharpness"]) and r["train/sharpness"] > 0
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
