"""The digits teacher: a small SD3-architecture MMDiT (diffusers SD3Transformer2DModel) in pixel space,
trained here by rectified flow, and its N-step Euler sampler with CFG.

Training: x0 from the train split, a random training template per image, 10% of prompts replaced by ""
(so CFG has an unconditional branch), sigma ~ logit-normal(0, 1), x_s = (1 - s) x0 + s noise, loss
mean ||v(x_s, s, c) - (noise - x0)||^2, AdamW with linear warmup and cosine decay, and an EMA of the weights
that becomes the teacher.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch

from senseflow import flow
from senseflow.models.base import Conditioning, Denoiser, guided_velocity
from senseflow.models.sd3 import SD3Denoiser
from senseflow.worlds.digits.config import SamplingConfig, TeacherConfig
from senseflow.worlds.digits.data import TRAIN_TEMPLATES, UNCONDITIONAL_PROMPT, DigitsSplit, prompt_for
from senseflow.worlds.digits.text import EMBED_DIM, DigitsTextEncoder

Tensor = torch.Tensor


def make_transformer(cfg: TeacherConfig, seed: int | None = None):
    """A freshly initialised SD3Transformer2DModel for 1x8x8 pixels (init drawn from `seed` if given)."""
    from diffusers import SD3Transformer2DModel

    inner = cfg.num_attention_heads * cfg.attention_head_dim
    kwargs = dict(sample_size=8, patch_size=cfg.patch_size, in_channels=1, out_channels=1, num_layers=cfg.num_layers,
                  attention_head_dim=cfg.attention_head_dim, num_attention_heads=cfg.num_attention_heads,
                  joint_attention_dim=EMBED_DIM, caption_projection_dim=inner, pooled_projection_dim=EMBED_DIM,
                  pos_embed_max_size=8 // cfg.patch_size)
    if seed is None:
        return SD3Transformer2DModel(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SD3Transformer2DModel(**kwargs)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))  # cosine down to 10%


def train_teacher(cfg: TeacherConfig, train: DigitsSplit, text_encoder: DigitsTextEncoder,
                  progress: bool = True, on_step: Callable[[int, SD3Denoiser], None] | None = None
                  ) -> tuple[SD3Denoiser, list[float]]:
    """Train by rectified flow; returns (the EMA teacher, frozen and in eval mode, per-step training losses).
    `on_step(step, ema)` runs after every step (e.g. to evaluate checkpoints); it must not change `ema`."""
    from senseflow.progress import bar as tqdm  # plain lines when not on a terminal

    rng = torch.Generator().manual_seed(cfg.seed)
    model = SD3Denoiser(make_transformer(cfg, seed=cfg.seed)).train()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))

    # The prompt table: every training prompt and "" (row 0), encoded once; batches index into it.
    table_prompts = [UNCONDITIONAL_PROMPT] + [prompt_for(t, d) for d in range(10) for t in TRAIN_TEMPLATES]
    states, pooled = text_encoder.table(table_prompts)
    states, pooled = states.cpu(), pooled.cpu()
    n_tpl = len(TRAIN_TEMPLATES)

    losses: list[float] = []
    smooth = None
    bar = tqdm(range(cfg.steps), desc="teacher", disable=not progress, dynamic_ncols=True)
    for step in bar:
        idx = torch.randint(len(train), (cfg.batch_size,), generator=rng)
        x0, labels = train.images[idx], train.labels[idx]
        tpl = torch.randint(n_tpl, (cfg.batch_size,), generator=rng)
        row = 1 + labels * n_tpl + tpl
        drop = torch.rand(cfg.batch_size, generator=rng) < cfg.prompt_dropout
        row = torch.where(drop, torch.zeros_like(row), row)
        cond = Conditioning(states[row], pooled[row])
        sigma = flow.sample_logit_normal(cfg.batch_size, cfg.logit_mean, cfg.logit_std, rng=rng)
        noise = torch.randn(x0.shape, generator=rng)
        x_s = flow.interpolate(x0, noise, sigma)
        loss = torch.nn.functional.mse_loss(model(x_s, sigma, cond), flow.velocity_target(x0, noise))

        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg.steps, cfg.warmup_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # EMA warms up (1 + n) / (10 + n) so short schedules still average only trained weights.
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)

        value = loss.item()
        losses.append(value)
        smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
        if step % 20 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{smooth:.4f}")
        if on_step is not None:
            on_step(step, ema)
    bar.close()
    return ema.eval(), losses


# ----------------------------------------------------------------------------- sampling
def euler_sigmas(steps: int, shift: float = 1.0) -> list[float]:
    """steps + 1 sigmas from 1 down to 0: uniform in unshifted sigma, then shift(., a)."""
    return [float(flow.shift(1 - i / steps, shift)) for i in range(steps + 1)]


def anchor_sigmas(table: Tensor, anchor_indices: Sequence[int]) -> list[float]:
    """The student's anchors as sigmas (descending), read from the world's sigma table."""
    return [float(table[i]) for i in anchor_indices]


@torch.no_grad()
def sample_euler_cfg(model: Denoiser, cond: Conditioning, uncond: Conditioning | None, noise: Tensor,
                     sigmas: Sequence[float], cfg_scale: float, batch_size: int = 250) -> Tensor:
    """Euler ODE sampling with CFG (one batched 2B forward per step) along `sigmas` (descending, ending at 0).

    noise: (N, C, H, W) at sigmas[0]; cond: batch N; uncond: batch 1 or N (unused when cfg_scale == 1).
    Returns x at sigmas[-1] (N, C, H, W), unclamped. Runs in chunks of `batch_size`.
    """
    out = []
    for lo in range(0, noise.shape[0], batch_size):
        x = noise[lo:lo + batch_size].clone()
        c = cond[lo:lo + batch_size]
        b = x.shape[0]
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            sigma = torch.full((b,), float(s), dtype=x.dtype, device=x.device)
            if cfg_scale == 1.0 or uncond is None:
                v = model(x, sigma, c)
            else:
                v = guided_velocity(model, x, sigma, c, uncond, cfg_scale)
            x = flow.euler_step(x, v, s, s_next)
        out.append(x)
    return torch.cat(out)


def sample_prompts(model: Denoiser, text_encoder: DigitsTextEncoder, prompts: list[str], noise: Tensor,
                   sampling: SamplingConfig, *, steps: int | None = None, sigmas: Sequence[float] | None = None,
                   cfg_scale: float | None = None) -> Tensor:
    """Teacher samples for `prompts` from `noise` (N, 1, 8, 8): Euler with CFG, `steps` uniform steps shifted by
    sampling.shift unless explicit `sigmas` are given. Returns (N, 1, 8, 8), unclamped."""
    if sigmas is None:
        sigmas = euler_sigmas(steps or sampling.steps, sampling.shift)
    cond = text_encoder.encode(prompts)
    uncond = text_encoder.uncond()
    scale = sampling.cfg_scale if cfg_scale is None else cfg_scale
    return sample_euler_cfg(model, cond, uncond, noise, sigmas, scale)
