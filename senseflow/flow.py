"""Rectified-flow conventions shared by the whole code base (see docs/ALGORITHM.md).

sigma in [0, 1]; sigma = 1 is pure noise.

    x_s      = (1 - s) * x0 + s * noise          (interpolate)
    v        = noise - x0                        (velocity_target)
    x0_hat   = x_s - s * v                       (x0_from_velocity)

Every tensor function here broadcasts a per-sample sigma of shape (B,) over the trailing
dimensions of x, and is pure: no state, no device or dtype decisions beyond the inputs'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Tensor = torch.Tensor


def _per_sample(sigma: Tensor | float, like: Tensor) -> Tensor:
    """Broadcast a scalar or a (B,) sigma against x of shape (B, ...)."""
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if s.ndim == 0:
        return s
    if s.ndim != 1 or s.shape[0] != like.shape[0]:
        raise ValueError(f"sigma must be a scalar or shape (B,) with B={like.shape[0]}, got {tuple(s.shape)}")
    return s.view(-1, *([1] * (like.ndim - 1)))


def interpolate(x0: Tensor, noise: Tensor, sigma: Tensor | float) -> Tensor:
    """x_s = (1 - s) x0 + s noise."""
    s = _per_sample(sigma, x0)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """The flow-matching target v = noise - x0."""
    return noise - x0


def x0_from_velocity(x_s: Tensor, sigma: Tensor | float, v: Tensor) -> Tensor:
    """Clean estimate x0_hat = x_s - s v."""
    return x_s - _per_sample(sigma, x_s) * v


def noise_from_velocity(x_s: Tensor, sigma: Tensor | float, v: Tensor) -> Tensor:
    """Noise estimate eps_hat = x_s + (1 - s) v."""
    return x_s + (1 - _per_sample(sigma, x_s)) * v


def velocity_from_x0(x_s: Tensor, sigma: Tensor | float, x0: Tensor) -> Tensor:
    """Inverse of x0_from_velocity: v = (x_s - x0) / s (s > 0)."""
    s = _per_sample(sigma, x_s)
    return (x_s - x0) / s


def shift(sigma: Tensor | float, a: float) -> Tensor | float:
    """Timestep shift a*s / (1 + (a - 1) s); a > 1 moves mass towards noise (SD3.5: a = 3)."""
    return a * sigma / (1 + (a - 1) * sigma)


def flux_mu(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
            base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FLUX's resolution-dependent shift exponent: linear in the number of packed image tokens."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def flux_shift(sigma: Tensor | float, image_seq_len: int) -> Tensor | float:
    """FLUX shift with a = exp(mu(image_seq_len)); for 1024 px (4096 tokens) a = e^1.15."""
    return shift(sigma, math.exp(flux_mu(image_seq_len)))


# ----------------------------------------------------------------------------- samplers
def sample_uniform(n: int, low: float = 0.0, high: float = 1.0, *, rng: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> Tensor:
    """sigma ~ U(low, high), shape (n,)."""
    return low + (high - low) * torch.rand(n, generator=rng, device=device)


def sample_logit_normal(n: int, mean: float = 0.0, std: float = 1.0, *, rng: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> Tensor:
    """sigma = sigmoid(N(mean, std)), shape (n,): SD3's default training density."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=rng, device=device))


def sigma_table(num_train_timesteps: int = 1000, shift_a: float = 1.0) -> Tensor:
    """The 1000-entry sigma table of diffusers' FlowMatchEulerDiscreteScheduler (index 0 = least noisy).

    Unshifted sigmas are (i + 1) / N for i = 0..N-1; the table is shift(., a) of those.
    """
    s = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    return shift(s, shift_a).float()


def sample_table_index(n: int, table: Tensor, low: int, high: int, *, rng: torch.Generator | None = None) -> Tensor:
    """sigma = table[i] with i uniform in [low, high] (inclusive), e.g. SD3.5's DMD sampler [20, 980]."""
    if not 0 <= low <= high < len(table):
        raise ValueError(f"index bounds [{low}, {high}] must lie in [0, {len(table) - 1}]")
    idx = torch.randint(low, high + 1, (n,), generator=rng)
    return table[idx]


# ----------------------------------------------------------------------------- steps
def euler_step(x: Tensor, v: Tensor, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
    """Deterministic ODE step x + (sigma_next - sigma) v."""
    return x + (_per_sample(sigma_next, x) - _per_sample(sigma, x)) * v


def renoise_step(x0_hat: Tensor, sigma_next: Tensor | float, noise: Tensor) -> Tensor:
    """Stochastic step: re-noise a clean estimate with fresh noise to sigma_next."""
    return interpolate(x0_hat, noise, sigma_next)


def cfg_combine(v_uncond: Tensor, v_cond: Tensor, scale: Tensor | float) -> Tensor:
    """Classifier-free guidance v = v_u + w (v_c - v_u); w may be per-sample (B,)."""
    w = _per_sample(scale, v_cond)
    return v_uncond + w * (v_cond - v_uncond)


def segment_ends(anchors: Sequence[float]) -> list[tuple[float, float]]:
    """(sigma_i, sigma_next) for each anchor, the last one ending at 0."""
    a = list(anchors)
    return [(a[i], a[i + 1] if i + 1 < len(a) else 0.0) for i in range(len(a))]
