"""One SenseFlow / DMD2 iteration: the generator step (DMD, adversarial and ISG terms, then IDA), the fake
score's step and the discriminator's step.

The `Distiller` owns the generator G, the fake score F, the frozen teacher, the optional
discriminator D and their optimizers, and performs `step(iteration, batch)`. It writes no files and
logs nothing: it returns a dict of scalars. The generator's loss is a sum of named terms (`_dmd_term`,
`_adversarial_term`, `_isg_term`); the discriminator computes its own losses (senseflow.discriminators).
Every random draw of an iteration comes from random-number generators (`rng`) seeded by (seed, iteration[,
rank]), so an interrupted run resumes bit-identically and the anchor index and backward-simulation coin are
shared across ranks while the noise differs per rank.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from senseflow import flow, losses
from senseflow import precision
from senseflow.config import GuidanceConfig, RunConfig, TimestepConfig
from senseflow.discriminators import GANInputs, frozen
from senseflow.generator import FewStepGenerator
from senseflow.models.base import Conditioning, Denoiser, LatentCodec, TextEncoder, guided_velocity

Tensor = torch.Tensor


@dataclass
class Batch:
    """latents: (B, C, H, W) real latents; pixels: (B, c, h, w) real images in [-1, 1] (D's real input and
    reference); cond: the prompts' conditioning."""

    latents: Tensor
    pixels: Tensor
    cond: Conditioning
    prompts: list[str] | None = None
    disc_text: Tensor | None = None  # D's own text embedding of the prompts (gan.text_condition=clip), per step

    def to(self, device: torch.device | str) -> "Batch":
        """The batch with its tensors on `device` (prompts and the per-step text embedding as they are)."""
        return dataclasses.replace(self, latents=self.latents.to(device), pixels=self.pixels.to(device),
                                   cond=self.cond.to(device))


def step_rng(seed: int, iteration: int, stream: int = 0, rank: int = 0) -> torch.Generator:
    """A CPU random-number generator determined by (seed, iteration, stream, rank)."""
    rng = torch.Generator()
    rng.manual_seed((seed * 1_000_003 + iteration * 9_176 + stream * 131 + rank * 7_919) % (2 ** 63 - 1))
    return rng


def draw_sigma(cfg: TimestepConfig, n: int, table: Tensor, rng: torch.Generator) -> Tensor:
    if cfg.kind == "table_index":
        return flow.sample_table_index(n, table, cfg.low, cfg.high, rng=rng)
    if cfg.kind == "logit_normal":
        s = flow.sample_logit_normal(n, cfg.mean, cfg.std, rng=rng)
    else:
        s = flow.sample_uniform(n, rng=rng)
    return flow.shift(s, cfg.shift) if cfg.shift != 1.0 else s


def draw_guidance(cfg: GuidanceConfig, n: int, rng: torch.Generator) -> Tensor:
    return cfg.low + (cfg.high - cfg.low) * torch.rand(n, generator=rng)


def eight_bit_choice(optim) -> bool:
    """Whether the run uses bitsandbytes' AdamW8bit, decided before any weight loads: optim.eight_bit=true
    without an importable bitsandbytes is a UserError naming the fixes, "auto" takes it when it imports."""
    if optim.eight_bit is False:
        return False
    try:
        import bitsandbytes  # noqa: F401
    except Exception as err:  # missing, or present without a usable CUDA build
        if optim.eight_bit == "auto":
            return False
        from senseflow.errors import UserError

        raise UserError(f"optim.eight_bit=true needs bitsandbytes, which does not import here "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                        "pip install bitsandbytes, or set optim.eight_bit=false (torch AdamW) or "
                        "optim.eight_bit=auto") from None
    return True


def make_optimizer(params, lr: float, cfg, eight_bit: bool | None = None) -> torch.optim.Optimizer:
    """AdamW over the parameters that require grad: bitsandbytes' 8-bit one when `eight_bit` (default:
    `eight_bit_choice(cfg)`), else torch's."""
    params = [p for p in params if p.requires_grad]
    if eight_bit is None:
        eight_bit = eight_bit_choice(cfg)
    if eight_bit:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, eps=cfg.eps)
    # foreach: one fused update per parameter list (torch picks it only for CUDA tensors by default)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, eps=cfg.eps,
                             foreach=True)


def warmup_factor(iteration: int, warmup: int) -> float:
    """The learning-rate multiplier at `iteration`: DMD2's constant-with-warmup (iteration / warmup, then 1;
    its schedulers step once per iteration, G's too); warmup 0 is the authors' constant rate."""
    return 1.0 if warmup <= 0 else min(1.0, iteration / warmup)


def optimizer_record(optimizer: torch.optim.Optimizer, cfg) -> dict:
    """What status.json says about the optimizer actually built (and what was asked for)."""
    cls = type(optimizer)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "eight_bit": cls.__module__.startswith("bitsandbytes"),
            "requested": cfg.eight_bit}


class Distiller(nn.Module):
    """G, F, teacher, D and the optimizers of one distillation run, and one iteration of it."""

    def __init__(self, cfg: RunConfig, teacher: Denoiser, text_encoder: TextEncoder, codec: LatentCodec,
                 sigma_table: Tensor, make_discriminator=None, rank: int = 0, student_init: Denoiser | None = None,
                 prepare=None, parallel=None):
        """make_discriminator(fake_score) -> nn.Module with trainable_parameters(), or None (no GAN).
        student_init: the network G and F start from (default: copies of the teacher, as the paper).
        prepare(distiller): runs once the modules exist and before the optimizers are built (device
        placement, gradient checkpointing, FSDP sharding: senseflow.train).
        parallel: the senseflow.parallel.Parallel layout (default: one process)."""
        super().__init__()
        from senseflow.parallel import Parallel

        self.cfg = cfg
        self.parallel = parallel or Parallel.single()
        self.rank = self.parallel.rank if parallel is not None else rank
        self.teacher = teacher.requires_grad_(False).eval()
        source = student_init if student_init is not None else teacher
        self.generator = source.student_copy().train()
        self.fake_score = source.student_copy().train()
        self.text_encoder = text_encoder
        self.codec = codec
        self.register_buffer("sigma_table", sigma_table.float(), persistent=False)
        self.few_step = FewStepGenerator(cfg.generator.anchor_indices, sigma_table, cfg.generator.pure_noise_start)
        discriminator = make_discriminator(self.fake_score) if make_discriminator is not None else None
        self.discriminator = discriminator
        precision.apply(self, cfg)  # one policy in every layout: before sharding (prepare) and the optimizers
        if prepare is not None:
            prepare(self)
        o = cfg.optim
        eight_bit = eight_bit_choice(o)
        self.opt_g = make_optimizer(self.generator.parameters(), o.lr_generator, o, eight_bit)
        self.opt_f = make_optimizer(self.fake_score.parameters(), o.lr_fake, o, eight_bit)
        self.opt_d = (make_optimizer(discriminator.trainable_parameters(), o.lr_disc, o, eight_bit)
                      if discriminator is not None else None)
        self.optimizer_info = optimizer_record(self.opt_g, o)
        self._base_lr = [(opt, lr) for opt, lr in ((self.opt_g, o.lr_generator), (self.opt_f, o.lr_fake),
                                                   (self.opt_d, o.lr_disc)) if opt is not None]
        with torch.no_grad():
            self._uncond = text_encoder.encode([""]).detach()

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    def _randn(self, shape, rng: torch.Generator) -> Tensor:
        return torch.randn(shape, generator=rng).to(self.device)

    def _uncond_for(self, b: int) -> Conditioning:
        return self._uncond.to(self.device).expand_to(b)

    def _teacher_velocity(self, x: Tensor, sigma: Tensor, cond: Conditioning, scale: Tensor) -> Tensor:
        return guided_velocity(self.teacher, x, sigma, cond, self._uncond_for(x.shape[0]), scale.to(self.device))

    def _clip(self, params) -> float:
        params = [p for p in params if p.grad is not None]
        if not params:
            return 0.0
        return float(torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip))

    def _gan_enabled(self) -> bool:
        return self.discriminator is not None and self.cfg.gan.kind != "none"

    def _gan_inputs(self, batch: Batch) -> GANInputs:
        """The batch and the means of reading generated latents, for the discriminator's losses."""
        table = self.sigma_table.cpu()
        return GANInputs(real_latents=batch.latents, real_pixels=batch.pixels, cond=batch.cond, text=batch.disc_text,
                         decode=self.codec.decode,
                         draw_sigma=lambda n, rng: draw_sigma(self.cfg.fake_score.timestep, n, table, rng).to(self.device),
                         randn=self._randn)

    # ------------------------------------------------------------------ the iteration
    def generator_input(self, batch: Batch, k: int, backsim: bool, rng: torch.Generator) -> Tensor:
        """x at anchor k: backward simulation of the current G, or a real latent noised to sigma_k."""
        b = batch.latents.shape[0]
        sigma_k = self.few_step.sigma(k)
        if backsim and k > 0:
            # the current G's own sample at anchor k: its x0 at anchor k-1 re-noised with fresh noise
            return self.few_step.backward_simulate(self.generator, batch.cond, k, tuple(batch.latents.shape),
                                                   rng=rng, device=self.device)
        noise = self._randn(batch.latents.shape, rng)
        if k == 0 and self.few_step.pure_noise_start:
            return self.few_step.start(noise)  # DMD2's pure_noise_mask: no trace of the real latent
        return flow.interpolate(batch.latents, noise, torch.full((b,), sigma_k, device=self.device))

    def set_learning_rates(self, iteration: int) -> None:
        """Each optimizer's rate for this iteration (a function of the iteration alone, so resume is exact)."""
        factor = warmup_factor(iteration, self.cfg.optim.warmup)
        for opt, lr in self._base_lr:
            for group in opt.param_groups:
                group["lr"] = lr * factor

    def step(self, iteration: int, batch: Batch) -> dict[str, float]:
        out: dict[str, float] = {}
        for _, phase in self.phases(iteration, batch):
            out.update(phase())
        return out

    def phases(self, iteration: int, batch: Batch, anchor: int | None = None, backsim: bool | None = None,
               gen_step: bool | None = None) -> list[tuple[str, Callable[[], dict[str, float]]]]:
        """One iteration as named phases that `step` runs in order (the planner counts each one's FLOPs and
        bytes). The names are fixed: a phase with nothing to do returns {}. `anchor`, `backsim` and `gen_step`
        override the draws `step` takes (the shared stream is consumed all the same)."""
        cfg = self.cfg
        if cfg.optim.warmup:
            self.set_learning_rates(iteration)
        seed = cfg.train.seed
        shared_rng = step_rng(seed, iteration, stream=0)            # same on every rank
        local_rng = step_rng(seed, iteration, stream=1, rank=self.rank)
        gen = iteration % cfg.optim.ttur == 0 if gen_step is None else gen_step
        b = batch.latents.shape[0]
        k = int(torch.randint(self.few_step.num_steps, (1,), generator=shared_rng))
        coin = bool(torch.rand(1, generator=shared_rng) < cfg.generator.backsim_prob)
        k = k if anchor is None else anchor
        coin = coin if backsim is None else backsim
        sigma_i = torch.full((b,), self.few_step.sigma(k), device=self.device)
        sigma_next = torch.full((b,), self.few_step.sigma(k + 1), device=self.device)
        dmd2_guidance = self._gan_enabled() and cfg.gan.train_fake_score_body  # the config allows it for dmd2 only
        s: dict = {"batch": batch}

        def generator_input() -> dict[str, float]:  # backward simulation, or a real latent noised to sigma_k
            s["x_i"] = self.generator_input(batch, k, coin, local_rng)
            if self._gan_enabled() and getattr(self.discriminator, "encodes_text", False):
                s["batch"] = dataclasses.replace(batch, disc_text=self.discriminator.encode_text(batch.prompts))
            return {"gen_step": float(gen), "anchor": float(k)}

        def generator_forward() -> dict[str, float]:
            with contextlib.nullcontext() if gen else torch.no_grad():
                s["v_g"] = self.generator(s["x_i"], sigma_i, s["batch"].cond)
                s["x0_g"] = flow.x0_from_velocity(s["x_i"], sigma_i, s["v_g"])
            return {}

        def generator_update() -> dict[str, float]:
            if not gen:
                return {}
            return self._generator_update(s["batch"], s["x_i"], s["v_g"], s["x0_g"], sigma_i, sigma_next, k, local_rng)

        def fake_score_update() -> dict[str, float]:
            s["x0_g"] = s["x0_g"].detach()
            s.pop("v_g", None)
            if dmd2_guidance:  # DMD2: F and its classifier in one update
                return self._guidance_update(s["batch"], s["x0_g"], sigma_i, local_rng)
            return self._fake_score_update(s["batch"], s["x0_g"], local_rng)

        def discriminator_update() -> dict[str, float]:
            if not self._gan_enabled() or dmd2_guidance:
                return {}
            return self._discriminator_update(s["batch"], s["x0_g"], sigma_i, local_rng)

        return [("backward simulation", generator_input), ("generator forward", generator_forward),
                ("generator step", generator_update), ("fake-score step", fake_score_update),
                ("discriminator step", discriminator_update)]

    def _generator_update(self, batch, x_i, v_g, x0_g, sigma_i, sigma_next, k, rng) -> dict[str, float]:
        """One step of G on the sum of its terms (each draws from `rng` in this order), then IDA."""
        # a frozen discriminator (and, for DMD2's head, F's body) stays frozen from building its graph until
        # after the backward: the backward then computes only the input gradients G needs, D's / F's .grad stay
        # untouched, and gradient checkpointing recomputes with the same requires_grad as the forward (else it
        # stops with CheckpointError: a different number of saved tensors)
        held = contextlib.ExitStack()
        total, out = self._dmd_term(batch, x0_g, rng)
        for loss, metrics in (self._adversarial_term(batch, x0_g, sigma_i, rng, held),
                              self._isg_term(batch, x_i, v_g, x0_g, sigma_i, sigma_next, k, rng)):
            if loss is not None:
                total = total + loss
            out.update(metrics)
        self.opt_g.zero_grad(set_to_none=True)
        with held:
            total.backward()
        out["grad_norm_g"] = self._clip(self.generator.parameters())
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)
        self.fake_score.zero_grad(set_to_none=True)  # DMD/ISG never train F; drop stray grads
        if self.cfg.ida.enabled:
            losses.ida_update_modules(self.fake_score, self.generator, self.cfg.ida.lam)
        out["loss_g"] = float(total.detach())
        return out

    def _dmd_term(self, batch: Batch, x0_g: Tensor, rng: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """Distribution matching: teacher (guided) and fake score denoise the re-noised generator sample."""
        cfg = self.cfg
        b = x0_g.shape[0]
        t = draw_sigma(cfg.dmd.timestep, b, self.sigma_table.cpu(), rng).to(self.device)
        eps = self._randn(x0_g.shape, rng)
        w = draw_guidance(cfg.dmd.guidance, b, rng)
        with torch.no_grad():
            x_t = flow.interpolate(x0_g.detach(), eps, t)
            x0_real = flow.x0_from_velocity(x_t, t, self._teacher_velocity(x_t, t, batch.cond, w))
            x0_fake = flow.x0_from_velocity(x_t, t, self.fake_score(x_t, t, batch.cond))
        grad = losses.dmd_gradient(x0_g, x0_real, x0_fake)
        loss = losses.dmd_loss(x0_g, grad)
        return loss, {"loss_dmd": float(loss.detach()), "dmd_grad_abs": float(grad.abs().mean())}

    def _adversarial_term(self, batch: Batch, x0_g: Tensor, sigma_i: Tensor, rng: torch.Generator,
                          held: contextlib.ExitStack) -> tuple[Tensor | None, dict[str, float]]:
        """gan.weight x the discriminator's generator loss, weighted per sample by omega(sigma_i); None where
        there is no GAN, its weight is 0 or omega is 0 at this anchor. Freezes D's parameters into `held`
        unless gan.d_receives_g_gradient (the authors' trainers: D stays trainable here, so the backward also
        leaves the generator loss's gradient in D's .grad for D's own step)."""
        cfg = self.cfg
        if not (self._gan_enabled() and cfg.gan.weight > 0):
            return None, {}
        wgt = losses.omega(sigma_i, cfg.gan.omega)
        if not float(wgt.abs().max()) > 0:
            return None, {}
        d = self.discriminator
        if not cfg.gan.d_receives_g_gradient:
            held.enter_context(frozen(d.frozen_for_generator()))
        loss = d.generator_loss(x0_g, self._gan_inputs(batch), wgt, rng)
        return cfg.gan.weight * loss, {"loss_adv": float(loss.detach())}

    def _isg_term(self, batch: Batch, x_i: Tensor, v_g: Tensor, x0_g: Tensor, sigma_i: Tensor, sigma_next: Tensor,
                  k: int, rng: torch.Generator) -> tuple[Tensor | None, dict[str, float]]:
        """isg.weight x the ISG loss in its configured form; None where ISG is off or weighs 0."""
        cfg = self.cfg
        if not (cfg.isg.enabled and cfg.isg.weight > 0):
            return None, {}
        b = x_i.shape[0]
        if cfg.isg.form == "teacher_x0":
            w_isg = draw_guidance(cfg.isg.guidance, b, rng)
            with torch.no_grad():
                x0_t = flow.x0_from_velocity(x_i, sigma_i, self._teacher_velocity(x_i, sigma_i, batch.cond, w_isg))
            loss = losses.isg_teacher_x0_loss(x0_g, x0_t, self._segment_end_scale(k), cfg.isg.distance,
                                              cfg.isg.huber_c)
        else:
            idx_i = torch.full((b,), self.few_step.index(k), dtype=torch.long)
            idx_n = torch.full((b,), self.few_step.index(k + 1), dtype=torch.long)
            t_mid = losses.sample_isg_midpoint(idx_i, idx_n, cfg.isg.margin, self.sigma_table.cpu(), rng).to(self.device)
            w_isg = draw_guidance(cfg.isg.guidance, b, rng)
            x_tar = losses.isg_target(
                x_i, sigma_i, sigma_next, t_mid,
                teacher_velocity=lambda x, s: self._teacher_velocity(x, s, batch.cond, w_isg),
                generator_velocity=lambda x, s: self.generator(x, s, batch.cond))
            loss = losses.isg_loss(v_g, x_i, sigma_i, sigma_next, x_tar, cfg.isg.distance, cfg.isg.huber_c)
        return cfg.isg.weight * loss, {"loss_isg": float(loss.detach())}

    def _fake_score_loss(self, batch: Batch, x0_g: Tensor, rng: torch.Generator) -> Tensor:
        """F's denoising loss on the generator's (detached) samples at a fresh time and noise."""
        cfg = self.cfg
        b = x0_g.shape[0]
        t = draw_sigma(cfg.fake_score.timestep, b, self.sigma_table.cpu(), rng).to(self.device)
        eps = self._randn(x0_g.shape, rng)
        x_t = flow.interpolate(x0_g, eps, t)
        v = self.fake_score(x_t, t, batch.cond)
        if cfg.fake_score.loss == "epsilon":
            return losses.epsilon_loss(flow.noise_from_velocity(x_t, t, v), eps)
        return losses.fake_score_loss(v, eps, x0_g)

    def _fake_score_update(self, batch: Batch, x0_g: Tensor, rng: torch.Generator) -> dict[str, float]:
        loss = self._fake_score_loss(batch, x0_g, rng)
        self.opt_f.zero_grad(set_to_none=True)
        loss.backward()
        norm = self._clip(self.fake_score.parameters())
        self.opt_f.step()
        self.opt_f.zero_grad(set_to_none=True)
        return {"loss_fake": float(loss.detach()), "grad_norm_f": norm}

    def _discriminator_update(self, batch: Batch, x0_g: Tensor, sigma_i: Tensor, rng: torch.Generator) -> dict[str, float]:
        cfg = self.cfg
        # D steps on every iteration, also where omega is 0 (its loss and gradient are then 0, but Adam's
        # moments and the spectral norms' power iterations still move), as the authors' trainers do
        wgt = losses.omega(sigma_i, cfg.gan.omega)
        loss, real_logits, fake_logits = self.discriminator.discriminator_loss(x0_g, self._gan_inputs(batch), wgt, rng)
        loss = cfg.gan.disc_weight * loss
        if not cfg.gan.d_receives_g_gradient:
            self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        norm = self._clip(self.discriminator.trainable_parameters())
        self.opt_d.step()
        self.opt_d.zero_grad(set_to_none=True)
        self.fake_score.zero_grad(set_to_none=True)  # DMD2 head: the body is trained by its own loss only
        return {"loss_disc": float(loss.detach()), "grad_norm_d": norm,
                "d_real": float(real_logits.detach().mean()), "d_fake": float(fake_logits.detach().mean())}

    def _segment_end_scale(self, k: int) -> float:
        """The factor of x0 in the backbone's own input at the end of segment k (ISG teacher_x0 form): the
        authors' SDXL form re-noises both x0 to DDPM step t_prev (the next anchor; 0 after the last) with the same
        noise, so their difference is sqrt(alpha_bar(t_prev)) (x0_G - x0_teacher); for flow families 1 - sigma."""
        idx = max(self.few_step.index(k + 1), 0)
        sigma = float(self.sigma_table[idx])
        if getattr(self.teacher, "family", "") == "sdxl":
            from senseflow.models.sdxl import alpha_bar_from_sigma

            return float(alpha_bar_from_sigma(sigma).sqrt())
        return 1.0 - sigma

    def _guidance_update(self, batch: Batch, x0_g: Tensor, sigma_i: Tensor, rng: torch.Generator) -> dict[str, float]:
        """DMD2's guidance step: the fake score's denoising loss plus disc_weight x its classifier loss, one
        backward through F's body and the head, one clip over both, then both optimizers step."""
        cfg = self.cfg
        loss_fake = self._fake_score_loss(batch, x0_g, rng)
        loss_cls, real_logits, fake_logits = self.discriminator.discriminator_loss(
            x0_g, self._gan_inputs(batch), losses.omega(sigma_i, cfg.gan.omega), rng, train_body=True)
        loss = loss_fake + cfg.gan.disc_weight * loss_cls
        self.opt_f.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        norm = self._clip(list(self.fake_score.parameters()) + list(self.discriminator.trainable_parameters()))
        self.opt_f.step()
        self.opt_d.step()
        self.opt_f.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        return {"loss_fake": float(loss_fake.detach()), "grad_norm_f": norm,
                "loss_disc": float((cfg.gan.disc_weight * loss_cls).detach()), "grad_norm_d": norm,
                "d_real": float(real_logits.detach().mean()), "d_fake": float(fake_logits.detach().mean())}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def sample(self, cond: Conditioning, noise: Tensor, sampler: str = "stochastic",
               rng: torch.Generator | None = None) -> Tensor:
        was = self.generator.training
        self.generator.eval()
        try:
            with precision.autocast(self.device, self.cfg.train.mixed_precision):
                return self.few_step.sample(self.generator, cond, noise, sampler, rng)
        finally:
            self.generator.train(was)

    # ------------------------------------------------------------------ state
    def _stateful(self) -> list[tuple[str, nn.Module, torch.optim.Optimizer | None, str]]:
        """(name, module, optimizer, optimizer name) of each trained part."""
        parts = [("generator", self.generator, self.opt_g, "opt_g"), ("fake_score", self.fake_score, self.opt_f, "opt_f")]
        if self.discriminator is not None:
            parts.append(("discriminator", self.discriminator, self.opt_d, "opt_d"))
        return parts

    def trainable_state(self) -> dict[str, dict[str, Tensor]]:
        """Full (unsharded) weights on CPU; the discriminator without its frozen backbone. With several
        processes this is a collective and only rank 0 receives the tensors."""
        from senseflow.parallel import full_state

        state = {}
        for name, module, _, _ in self._stateful():
            sd = full_state(module, self.parallel)
            state[name] = {k: v for k, v in sd.items() if not k.startswith("backbone.")} if name == "discriminator" else sd
        return state

    def optimizer_state(self) -> dict[str, dict]:
        from senseflow.parallel import full_optimizer_state

        return {oname: full_optimizer_state(module, opt, self.parallel)
                for _, module, opt, oname in self._stateful() if opt is not None}

    def load_trainable_state(self, state: dict[str, dict[str, Tensor]]) -> None:
        from senseflow.parallel import load_full_state

        load_full_state(self.generator, state["generator"], self.parallel)
        load_full_state(self.fake_score, state["fake_score"], self.parallel)
        if self.discriminator is not None and "discriminator" in state:
            expected = {k for k in self.discriminator.state_dict() if not k.startswith("backbone.")}
            got = set(state["discriminator"])
            if got != expected:
                raise ValueError(f"discriminator checkpoint does not match: missing {sorted(expected - got)[:3]}, "
                                 f"unexpected {sorted(got - expected)[:3]}")
            # the frozen backbone keeps the weights it was loaded with; only D's trained part is set
            load_full_state(self.discriminator, state["discriminator"], self.parallel, strict=False)

    def load_optimizer_state(self, state: dict[str, dict]) -> None:
        from senseflow.parallel import load_full_optimizer_state

        for name, module, opt, oname in self._stateful():
            if opt is None or (name == "discriminator" and oname not in state):
                continue
            if oname not in state:
                raise ValueError(f"checkpoint has no {oname} optimizer state")
            load_full_optimizer_state(module, opt, state[oname], self.parallel)


def finite(metrics: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in metrics.values())
