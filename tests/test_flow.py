"""The rectified-flow conventions against hand-derived values and diffusers' scheduler."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from senseflow import flow


def test_interpolate_and_targets_by_hand():
    x0 = torch.tensor([[2.0, -1.0]])
    noise = torch.tensor([[0.5, 3.0]])
    xs = flow.interpolate(x0, noise, torch.tensor([0.25]))
    assert torch.allclose(xs, torch.tensor([[1.625, 0.0]]))  # 0.75*2+0.25*0.5, 0.75*-1+0.25*3
    v = flow.velocity_target(x0, noise)
    assert torch.allclose(v, torch.tensor([[-1.5, 4.0]]))
    assert torch.allclose(flow.x0_from_velocity(xs, 0.25, v), x0)
    assert torch.allclose(flow.noise_from_velocity(xs, 0.25, v), noise)
    assert torch.allclose(flow.velocity_from_x0(xs, 0.25, x0), v)


def test_per_sample_sigma_broadcasts_and_rejects_bad_shapes():
    x0, noise = torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2)
    xs = flow.interpolate(x0, noise, torch.tensor([0.0, 0.5, 1.0]))
    assert xs[:, 0, 0, 0].tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="shape"):
        flow.interpolate(x0, noise, torch.tensor([0.1, 0.2]))


def test_shift_by_hand_and_flux_mu():
    assert flow.shift(0.5, 3.0) == pytest.approx(0.75)   # 1.5 / 2
    assert flow.shift(0.25, 3.0) == pytest.approx(0.5)   # 0.75 / 1.5
    assert flow.shift(1.0, 7.0) == pytest.approx(1.0)
    assert flow.flux_mu(256) == pytest.approx(0.5)
    assert flow.flux_mu(4096) == pytest.approx(1.15)
    # the FLUX anchors of docs/ALGORITHM.md are the uniform times .75/.5/.25 shifted at 1024 px
    assert [round(float(flow.flux_shift(t, 4096)), 3) for t in (0.75, 0.5, 0.25)] == [0.905, 0.760, 0.513]


def test_sigma_table_matches_sd35_anchor_values():
    table = flow.sigma_table(1000, 3.0)
    assert [round(float(table[i]), 4) for i in (999, 749, 499, 249)] == [1.0, 0.9, 0.75, 0.5]
    assert float(table[0]) == pytest.approx(flow.shift(0.001, 3.0), rel=1e-5)


def test_sigma_table_equals_diffusers_scheduler_table():
    for a in (1.0, 3.0):
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=a)
        ours = flow.sigma_table(1000, a)
        theirs = sched.sigmas.flip(0)  # diffusers stores noisiest first
        assert torch.allclose(ours, theirs.float(), atol=1e-6)


def test_euler_step_and_scale_noise_agree_with_diffusers():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(4)
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=rng)
    v = torch.randn(2, 4, 8, 8, generator=rng)
    for i, t in enumerate(sched.timesteps):
        s, s_next = sched.sigmas[i].item(), sched.sigmas[i + 1].item()
        theirs = sched.step(v, t, x, return_dict=False)[0]
        ours = flow.euler_step(x, v, s, s_next)
        assert torch.allclose(ours, theirs, atol=1e-6)
        x = theirs
    x0, noise = torch.randn(1, 4, 8, 8, generator=rng), torch.randn(1, 4, 8, 8, generator=rng)
    t = sched.timesteps[1:2]
    assert torch.allclose(sched.scale_noise(x0, t, noise), flow.interpolate(x0, noise, sched.sigmas[1].item()), atol=1e-6)


def test_scheduler_shifted_sigmas_equal_our_shift():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(4)
    # diffusers spaces its timesteps linearly between the (already shifted) table ends, then shifts them
    unshifted = torch.linspace(1.0, flow.shift(1 / 1000, 3.0), 4)
    assert torch.allclose(sched.sigmas[:-1], flow.shift(unshifted, 3.0), atol=1e-4)


def test_samplers_ranges_and_bounds():
    rng = torch.Generator().manual_seed(0)
    u = flow.sample_uniform(10_000, 0.2, 0.4, rng=rng)
    assert 0.2 <= float(u.min()) and float(u.max()) <= 0.4
    ln = flow.sample_logit_normal(20_000, 0.0, 1.0, rng=rng)
    assert float(ln.median()) == pytest.approx(0.5, abs=0.02)   # sigmoid(N(0,1)) has median 1/2
    table = flow.sigma_table(1000, 3.0)
    s = flow.sample_table_index(5000, table, 20, 980, rng=rng)
    assert float(s.min()) >= float(table[20]) - 1e-7 and float(s.max()) <= float(table[980]) + 1e-7
    with pytest.raises(ValueError):
        flow.sample_table_index(1, table, 10, 1000)


def test_renoise_and_cfg_combine():
    x0, noise = torch.full((1, 1), 2.0), torch.full((1, 1), -2.0)
    assert float(flow.renoise_step(x0, 0.5, noise)) == 0.0
    vu, vc = torch.tensor([[1.0]]), torch.tensor([[3.0]])
    assert float(flow.cfg_combine(vu, vc, 1.0)) == 3.0
    assert float(flow.cfg_combine(vu, vc, 0.0)) == 1.0
    assert float(flow.cfg_combine(vu, vc, 4.0)) == 9.0   # 1 + 4 * 2
    per = flow.cfg_combine(vu.repeat(2, 1), vc.repeat(2, 1), torch.tensor([1.0, 2.0]))
    assert per.flatten().tolist() == [3.0, 5.0]


def test_euler_is_exact_for_straight_paths():
    # x0 fixed and noise fixed: the true velocity is constant, so one Euler step lands exactly
    x0, noise = torch.randn(2, 3), torch.randn(2, 3)
    x1 = flow.interpolate(x0, noise, 1.0)
    out = flow.euler_step(x1, flow.velocity_target(x0, noise), 1.0, 0.0)
    assert torch.allclose(out, x0, atol=1e-6)
    assert flow.segment_ends([1.0, 0.5]) == [(1.0, 0.5), (0.5, 0.0)]
    assert math.isclose(flow.shift(0.0, 3.0), 0.0)
