"""A stand-in DMD iteration of the real shape, timed on the world's own networks (a benchmark, not a test).

One iteration at batch B: generator forward (+ backward on generator steps), the teacher with CFG (one
batched 2B forward), the fake score forward, the DMD gradient, the VFM discriminator on the generator's
sample, IDA's lerp, then a fake-score training step and a discriminator step on real vs fake. With
`isg=True` the generator step also runs ISG (one more CFG teacher forward and one generator forward without
gradient). Backward simulation is left out (on average 0.75 extra generator forwards without gradient per
iteration with 4 anchors and p = 0.5).

The discriminator is senseflow.discriminators.VFMDiscriminator on the world's backbone directory when that
module is importable, otherwise a small stand-in head on the same backbone; the result says which.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from senseflow import flow
from senseflow.models.base import Conditioning, Denoiser, guided_velocity
from senseflow.worlds.digits.data import DigitsSplit
from senseflow.worlds.digits.text import DigitsTextEncoder

Tensor = torch.Tensor


@contextmanager
def num_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _StandInDiscriminator(nn.Module):
    """Frozen backbone + one conv head per block output, text-projected logits (used only as a fallback)."""

    def __init__(self, backbone_dir: Path, text_dim: int):
        super().__init__()
        from senseflow.worlds.digits.backbone import load_backbone

        self.backbone = load_backbone(backbone_dir)
        width = self.backbone.config.hidden_size
        n = self.backbone.config.num_hidden_layers + 1
        self.heads = nn.ModuleList([nn.Sequential(nn.Conv2d(width, 64, 3, padding=1), nn.LeakyReLU(0.2),
                                                  nn.Conv2d(64, 64, 1)) for _ in range(n)])
        self.cmapper = nn.Linear(text_dim, 64)

    def trainable_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]

    def forward(self, images: Tensor, text_embed: Tensor, ref_images: Tensor | None = None) -> Tensor:
        from senseflow.worlds.digits.backbone import pixel_values

        hidden = self.backbone(pixel_values=pixel_values(images), output_hidden_states=True).hidden_states
        b, side = images.shape[0], images.shape[-1] // self.backbone.config.patch_size
        cmap = self.cmapper(text_embed)[:, :, None, None]
        logits = []
        for h, head in zip(hidden, self.heads):
            m = (h[:, 1:] + h[:, :1]).transpose(1, 2).reshape(b, -1, side, side)
            logits.append((head(m) * cmap).sum(1).flatten(1) / 8.0)
        return torch.cat(logits, 1)


def _discriminator(backbone_dir: Path, text_dim: int, layers: tuple[int, ...], reference: bool
                   ) -> tuple[nn.Module, str]:
    try:
        from senseflow.discriminators import VFMDiscriminator

        disc = VFMDiscriminator(str(backbone_dir), text_dim=text_dim, image_size=8, layers=list(layers),
                                reference=reference)
        return disc, f"VFMDiscriminator(layers={list(layers)}, reference={reference})"
    except ImportError:  # the discriminator module is optional here; the timing still means something
        return _StandInDiscriminator(backbone_dir, text_dim), "stand-in head"


def time_dmd_iteration(teacher: Denoiser, text_encoder: DigitsTextEncoder, backbone_dir: str | Path,
                       train: DigitsSplit, anchors: list[float], *, batch_size: int = 64, iterations: int = 10,
                       threads: int = 1, cfg_scale: float = 2.0, seed: int = 0,
                       disc_layers: tuple[int, ...] = (-1,), disc_reference: bool = True) -> dict:
    """Median milliseconds per iteration: `full_ms` (a generator step: TTUR's expensive iteration),
    `critic_ms` (fake score and discriminator only), `ttur5_ms` (the mean over a TTUR period of 5),
    `full_isg_ms` (a generator step with ISG) and `full_no_disc_ms` / `critic_no_disc_ms` (the same without
    any discriminator: what the generator, teacher and fake score cost alone)."""
    g = torch.Generator().manual_seed(seed)
    with num_threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        teacher = teacher.eval().requires_grad_(False)
        generator = teacher.student_copy().train()
        fake_score = teacher.student_copy().train()
        disc, disc_name = _discriminator(Path(backbone_dir), text_encoder.encode([""]).pooled.shape[-1], disc_layers,
                                         disc_reference)
        ref_for = (lambda images: images) if disc_reference else (lambda images: None)
        opt_g = torch.optim.AdamW(generator.parameters(), lr=1e-5)
        opt_f = torch.optim.AdamW(fake_score.parameters(), lr=1e-5)
        opt_d = torch.optim.AdamW(disc.trainable_parameters(), lr=1e-5)
        uncond = text_encoder.uncond()
        b = batch_size
        ends = flow.segment_ends(anchors)

        def iteration(generator_step: bool, isg: bool, use_disc: bool = True) -> None:
            batch = train.sample(b, g)
            cond: Conditioning = text_encoder.encode(batch.prompts)
            k = int(torch.randint(len(anchors), (1,), generator=g))
            s_i, s_next = ends[k]
            sig_i = torch.full((b,), s_i)
            x_i = flow.interpolate(batch.images, torch.randn(batch.images.shape, generator=g), sig_i)
            with torch.set_grad_enabled(generator_step):
                v_g = generator(x_i, sig_i, cond)
                x0_g = flow.x0_from_velocity(x_i, sig_i, v_g)
            if generator_step:
                sig_t = flow.sample_logit_normal(b, generator=g)
                x_t = flow.interpolate(x0_g.detach(), torch.randn(x0_g.shape, generator=g), sig_t)
                with torch.no_grad():
                    x0_real = flow.x0_from_velocity(x_t, sig_t, guided_velocity(teacher, x_t, sig_t, cond, uncond,
                                                                               cfg_scale))
                    x0_fake = fake_score.x0(x_t, sig_t, cond)
                    grad = (x0_fake - x0_real) / (x0_g - x0_real).abs().mean((1, 2, 3), keepdim=True).clamp_min(1e-8)
                loss = 0.5 * torch.nn.functional.mse_loss(x0_g, (x0_g - grad).detach())
                if use_disc:
                    loss = loss - 0.1 * disc(x0_g, cond.pooled, ref_for(batch.images)).mean()
                if isg:
                    t_mid = s_next + (s_i - s_next) * (0.05 + 0.9 * float(torch.rand((), generator=g)))
                    with torch.no_grad():
                        x_mid = flow.euler_step(x_i, guided_velocity(teacher, x_i, sig_i, cond, uncond, cfg_scale),
                                                s_i, t_mid)
                        sig_mid = torch.full((b,), t_mid)
                        x_tar = flow.euler_step(x_mid, generator(x_mid, sig_mid, cond), t_mid, s_next)
                    x_dir = flow.euler_step(x_i, v_g, s_i, s_next)
                    loss = loss + (torch.sqrt((x_dir - x_tar) ** 2 + 1e-6) - 1e-3).mean()
                opt_g.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(generator.parameters(), 1.0)
                opt_g.step()
                with torch.no_grad():  # IDA
                    for p_f, p_g in zip(fake_score.parameters(), generator.parameters()):
                        p_f.lerp_(p_g, 1 - 0.97)
            x0 = x0_g.detach()
            sig = flow.sample_logit_normal(b, generator=g)
            eps = torch.randn(x0.shape, generator=g)
            loss_f = torch.nn.functional.mse_loss(fake_score(flow.interpolate(x0, eps, sig), sig, cond), eps - x0)
            opt_f.zero_grad(set_to_none=True)
            loss_f.backward()
            opt_f.step()
            if use_disc:
                ref = ref_for(batch.images)
                loss_d = torch.relu(1 - disc(batch.images, cond.pooled, ref)).mean() + \
                    torch.relu(1 + disc(x0, cond.pooled, ref)).mean()
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()

        def timed(generator_step: bool, isg: bool, use_disc: bool = True) -> float:
            times = []
            for _ in range(iterations):
                t0 = time.perf_counter()
                iteration(generator_step, isg, use_disc)
                times.append(time.perf_counter() - t0)
            return 1000 * statistics.median(times)

        for _ in range(2):  # warm-up (allocator, first-call paths)
            iteration(True, True)
        full = timed(True, False)
        critic = timed(False, False)
        full_isg = timed(True, True)
        full_nd = timed(True, False, use_disc=False)
        critic_nd = timed(False, False, use_disc=False)
    return {"threads": threads, "batch_size": batch_size, "discriminator": disc_name, "full_ms": round(full, 1),
            "critic_ms": round(critic, 1), "ttur5_ms": round((full + 4 * critic) / 5, 1),
            "full_isg_ms": round(full_isg, 1), "full_no_disc_ms": round(full_nd, 1),
            "critic_no_disc_ms": round(critic_nd, 1), "ttur5_no_disc_ms": round((full_nd + 4 * critic_nd) / 5, 1)}
