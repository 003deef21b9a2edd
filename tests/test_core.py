"""The distillation core against an analytic teacher (a Gaussian mixture with a closed-form flow)."""

import copy

import pytest
import torch

from senseflow import config as C
from senseflow import flow, losses
from senseflow.distill import Batch, Distiller
from senseflow.models.base import IdentityCodec
from senseflow.worlds.gmm import GMMTeacher, GMMTextEncoder, MLPDenoiser, sliced_wasserstein

K = 2
MEANS = torch.tensor([[[2.0, 2.0], [-2.0, -2.0]], [[2.0, -2.0], [-2.0, 2.0]]])


def _cfg(*over):
    return C.resolve("digits-senseflow", ["gan.kind=none", "dmd.guidance.low=1", "dmd.guidance.high=1",
                                          "optim.weight_decay=0", *over])


def _prompts(labels):
    return [f"class {int(c)}" for c in labels]


def test_dmd_gradient_is_the_normalised_score_difference():
    """g = (x0_fake - x0_real)/norm, and x0_fake - x0_real = s^2/(1-s) (score_fake - score_real)."""
    real, fake = GMMTeacher(MEANS, 0.3), GMMTeacher(MEANS + 0.7, 0.5)
    text = GMMTextEncoder(K)
    rng = torch.Generator().manual_seed(0)
    labels = torch.randint(K, (64,), generator=rng)
    cond = text.encode(_prompts(labels))
    x0_g = real.sample(labels, rng).requires_grad_(True)
    s = torch.full((64,), 0.4)
    x_t = flow.interpolate(x0_g.detach(), torch.randn(x0_g.shape, generator=rng), s)
    x0_real, x0_fake = real.x0_hat(x_t, s, cond), fake.x0_hat(x_t, s, cond)
    grad = losses.dmd_gradient(x0_g, x0_real, x0_fake)
    # direction: per-sample positive multiple of (x0_fake - x0_real)
    diff = (x0_fake - x0_real).reshape(64, -1)
    cos = torch.nn.functional.cosine_similarity(grad.reshape(64, -1), diff, dim=1)
    assert torch.allclose(cos, torch.ones(64), atol=1e-5)
    # Tweedie: the x0 difference is the score difference scaled by s^2 / (1 - s)
    x = x_t.clone().requires_grad_(True)
    score_real = torch.autograd.grad(real.log_density(x, s, cond).sum(), x)[0]
    score_fake = torch.autograd.grad(fake.log_density(x, s, cond).sum(), x)[0]
    expected = (0.4 ** 2 / 0.6) * (score_fake - score_real)
    assert torch.allclose((x0_fake - x0_real).double(), expected.double(), atol=1e-4)
    # the loss's gradient w.r.t. x0_g is g / numel
    loss = losses.dmd_loss(x0_g, grad)
    loss.backward()
    assert torch.allclose(x0_g.grad * x0_g.numel(), grad, atol=1e-6)


def test_dmd_gradient_vanishes_with_a_perfect_fake_score():
    real = GMMTeacher(MEANS, 0.3)
    text = GMMTextEncoder(K)
    rng = torch.Generator().manual_seed(1)
    labels = torch.randint(K, (32,), generator=rng)
    cond = text.encode(_prompts(labels))
    x0_g = real.sample(labels, rng)
    s = torch.rand(32, generator=rng) * 0.9 + 0.05
    x_t = flow.interpolate(x0_g, torch.randn(x0_g.shape, generator=rng), s)
    same = copy.deepcopy(real)  # the generator already matches the data: the fake score equals the real one
    grad = losses.dmd_gradient(x0_g, real.x0_hat(x_t, s, cond), same.x0_hat(x_t, s, cond))
    assert float(grad.abs().max()) == 0.0
    off = GMMTeacher(MEANS * 0.5, 0.3)
    assert float(losses.dmd_gradient(x0_g, real.x0_hat(x_t, s, cond), off.x0_hat(x_t, s, cond)).abs().mean()) > 0.1


def test_dmd_gradient_non_finite_becomes_zero():
    x = torch.zeros(2, 1, 2, 2)
    g = losses.dmd_gradient(x, x, torch.ones_like(x))  # normaliser 0 -> inf -> 0
    assert torch.equal(g, torch.zeros_like(g))


def _distill(anchors, iterations, fit_steps, seed=0):
    torch.manual_seed(seed)
    teacher, text = GMMTeacher(MEANS, 0.3), GMMTextEncoder(K)
    student = MLPDenoiser(2, K, 64).fit_to(teacher, text, steps=fit_steps, seed=seed)
    cfg = _cfg(f"generator.anchor_indices={anchors}", "isg.enabled=false", "ida.enabled=true",
               "optim.lr_generator=1e-3", "optim.lr_fake=1e-3", f"train.seed={seed}")
    d = Distiller(cfg, teacher, text, IdentityCodec(), flow.sigma_table(1000, 1.0), student_init=student)
    rng = torch.Generator().manual_seed(100 + seed)

    def distance():
        labels = torch.randint(K, (2000,), generator=rng)
        x = d.sample(text.encode(_prompts(labels)), torch.randn(2000, 2, 1, 1, generator=rng), "stochastic", rng=rng)
        return sliced_wasserstein(x, teacher.sample(labels, rng))

    start = distance()
    for it in range(iterations):
        labels = torch.randint(K, (128,), generator=rng)
        x0 = teacher.sample(labels, rng)
        d.step(it, Batch(x0, x0, text.encode(_prompts(labels))))
    return start, distance()


def test_one_step_distillation_reduces_distance_to_the_teacher_distribution():
    start, end = _distill([999], 400, fit_steps=300)
    assert end < 0.5 * start, (start, end)


def test_four_step_distillation_reduces_distance_to_the_teacher_distribution():
    start, end = _distill([999, 749, 499, 249], 400, fit_steps=10)
    assert end < 0.7 * start, (start, end)


def test_ida_is_the_lerp_and_lambda_one_is_identity():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    losses.ida_update_modules(a, b, 0.9)
    for k, v in a.state_dict().items():
        assert torch.allclose(v, 0.9 * before[k] + 0.1 * b.state_dict()[k])
    snap = {k: v.clone() for k, v in a.state_dict().items()}
    losses.ida_update_modules(a, b, 1.0)
    assert all(torch.equal(v, snap[k]) for k, v in a.state_dict().items())
    with pytest.raises(ValueError):
        losses.ida_update_modules(a, torch.nn.Linear(3, 3), 0.9)


def test_ida_runs_right_after_each_generator_step():
    teacher, text = GMMTeacher(MEANS, 0.3), GMMTextEncoder(K)
    student = MLPDenoiser(2, K, 16)
    cfg = _cfg("isg.enabled=false", "ida.lam=0.5", "optim.ttur=2")
    d = Distiller(cfg, teacher, text, IdentityCodec(), flow.sigma_table(1000, 1.0), student_init=student)
    x0 = teacher.sample(torch.zeros(8, dtype=torch.long))
    batch = Batch(x0, x0, text.encode(["class 0"] * 8))
    f0 = {k: v.clone() for k, v in d.fake_score.state_dict().items()}
    d._fake_score_update = lambda *a, **k: {}   # isolate IDA from the fake score's own step
    d.step(0, batch)                              # generator step (0 % 2 == 0), then IDA
    g1 = d.generator.state_dict()
    for k, v in d.fake_score.state_dict().items():
        assert torch.allclose(v, 0.5 * f0[k] + 0.5 * g1[k], atol=1e-6)
    f1 = {k: v.clone() for k, v in d.fake_score.state_dict().items()}
    d.step(1, batch)                              # no generator step: no IDA
    assert all(torch.equal(v, f1[k]) for k, v in d.fake_score.state_dict().items())


def _point_mass_world():
    # one point mass per class (tau = 0): the teacher's flow paths are straight lines, so its Euler steps
    # are its exact flow map
    return GMMTeacher(MEANS[:, :1], 0.0), GMMTextEncoder(K)


def test_isg_loss_vanishes_for_the_exact_flow_map_and_is_positive_otherwise():
    teacher, text = _point_mass_world()
    rng = torch.Generator().manual_seed(3)
    labels = torch.randint(K, (64,), generator=rng)
    cond = text.encode(_prompts(labels))
    x_i = torch.randn(64, 2, 1, 1, generator=rng)
    s_i, s_next = torch.full((64,), 1.0), torch.full((64,), 0.75)
    t_mid = losses.sample_isg_midpoint(torch.full((64,), 999), torch.full((64,), 749), 20,
                                       flow.sigma_table(1000, 1.0), rng)
    assert float(t_mid.min()) >= 0.769 and float(t_mid.max()) <= 0.98
    tv = lambda x, s: teacher(x, s, cond)  # noqa: E731
    exact = losses.isg_loss(teacher(x_i, s_i, cond), x_i, s_i, s_next,
                            losses.isg_target(x_i, s_i, s_next, t_mid, tv, tv), kind="l2")
    assert float(exact) < 1e-8
    student = MLPDenoiser(2, K, 16)
    x_tar = losses.isg_target(x_i, s_i, s_next, t_mid, tv, lambda x, s: student(x, s, cond))
    v = student(x_i, s_i, cond)
    bad = losses.isg_loss(v, x_i, s_i, s_next, x_tar)
    assert float(bad.detach()) > 1e-3
    bad.backward()
    assert all(p.grad is not None for p in student.parameters())


def test_isg_gradients_reach_only_the_generator():
    teacher, text = _point_mass_world()
    cfg = _cfg("ida.enabled=false", "isg.weight=1.0")
    d = Distiller(cfg, teacher, text, IdentityCodec(), flow.sigma_table(1000, 1.0),
                  student_init=MLPDenoiser(2, K, 16))
    x0 = teacher.sample(torch.zeros(16, dtype=torch.long))
    batch = Batch(x0, x0, text.encode(["class 0"] * 16))
    f_before = {k: v.clone() for k, v in d.fake_score.state_dict().items()}
    g_before = {k: v.clone() for k, v in d.generator.state_dict().items()}
    d._fake_score_update = lambda *a, **k: {}
    m = d.step(0, batch)
    assert m["loss_isg"] > 0
    assert all(torch.equal(v, f_before[k]) for k, v in d.fake_score.state_dict().items())  # F untouched
    assert any(not torch.equal(v, g_before[k]) for k, v in d.generator.state_dict().items())


def test_isg_midpoint_respects_margins_and_last_segment():
    table = flow.sigma_table(1000, 1.0)
    rng = torch.Generator().manual_seed(0)
    t = losses.sample_isg_midpoint(torch.full((4000,), 249), torch.full((4000,), -1), 20, table, rng)
    assert abs(float(t.min()) - 0.020) < 1e-6 and abs(float(t.max()) - 0.230) < 1e-6
    # a segment shorter than twice the margin uses its middle index
    t2 = losses.sample_isg_midpoint(torch.tensor([30]), torch.tensor([20]), 20, table, rng)
    assert float(t2) == pytest.approx(float(table[25]))


def test_pseudo_huber_and_omega_values():
    a, b = torch.tensor([0.0, 3.0]), torch.tensor([0.0, 0.0])
    assert float(losses.pseudo_huber(a, b, 1e-3)) == pytest.approx((0 + (3.0000001666 - 1e-3)) / 2, rel=1e-5)
    s = torch.tensor([1.0, 0.9, 0.75, 0.5])
    assert torch.allclose(losses.omega(s, "paper"), torch.tensor([0.0, 0.01, 0.0625, 0.25]))
    # the authors' SD3.5 time weight: FlowMatchEuler(shift 3).sigmas[anchor index]^2 (their sigmas_timew)
    assert torch.allclose(losses.omega(s, "sd35"), torch.tensor([8.964e-6, 0.25133, 0.56362, 0.81086]), atol=2e-5)
    t_sdxl = losses.omega(torch.tensor([0.5]), "sdxl")
    assert float(t_sdxl) == pytest.approx(2 ** -0.5)


def test_gan_losses():
    r, f = torch.tensor([[2.0, 0.0]]), torch.tensor([[-2.0, 0.5]])
    assert float(losses.hinge_d_loss(r, f)) == pytest.approx((0 + 0 + 1 + 1.5) / 2)
    assert float(losses.hinge_g_loss(f, torch.tensor([2.0]))) == pytest.approx(-2 * (-1.5) / 2)
    assert float(losses.logistic_g_loss(torch.tensor([0.0]))) == pytest.approx(0.693147, rel=1e-5)
