"""Sampling speed-up: the 4-step student against the teacher at 50 guided Euler steps, end to end (text
encoding, sampling, VAE decode), same batch, prompts and noise (a benchmark, not a test).

The limit is the ratio of network evaluations: 50 steps x 2 (CFG: conditional and unconditional, one
batched forward of 2B) / 4 = 25x; FLUX.1-dev's guidance is an input of one forward (no CFG), so its teacher
makes 50 evaluations and the limit is 12.5x. efficiency = speed-up / limit; target >= 22/25 = 0.88.
The student is the generator as the Distiller builds it (the teacher's architecture: its weights do not
change the cost), stored in the teacher's dtype as a released student is. On a GPU both sample under the
run's bf16 autocast and every time is read after the device has finished (senseflow.bench.clock). Times
are the median of `repeats` runs each, student and teacher runs alternating, after a warm-up (the
student's 4 steps, the teacher's first 2).

The 25x counts a CFG forward of 2B as two forwards of B, true only where the cost grows linearly with the
batch. `limit_at_this_batch` = 50 t(teacher forward as sampled) / (4 t(student forward of B)), with both
forwards timed alone: the speed-up the network passes allow at this batch, and `efficiency_at_this_batch`
the speed-up against it (what is left is sampling overhead: text encoding, decoding, the Euler steps).
"""

from __future__ import annotations

import statistics

import torch

from senseflow.bench import setups
from senseflow.bench.clock import now
from senseflow.bench.setups import Setup

TEACHER_STEPS = 50


def time_sampling(setup: Setup, *, batch_size: int, repeats: int = 3) -> dict:
    from senseflow.generator import FewStepGenerator, teacher_sample

    cfg, bundle, dev = setup.cfg, setup.components.bundle, setup.device
    teacher, codec, text = bundle.teacher, bundle.codec, bundle.text_encoder
    student = teacher.student_copy().eval()  # as released: the teacher's architecture and dtype
    few = FewStepGenerator(cfg.generator.anchor_indices, bundle.sigma_table, cfg.generator.pure_noise_start)
    prompts = (list(setup.components.sample_prompts) * batch_size)[:batch_size] or ["a photo"] * batch_size
    rng = torch.Generator().manual_seed(0)
    noise = torch.randn((batch_size, *bundle.latent_shape), generator=rng).to(dev)
    sigmas = torch.linspace(1.0, 0.0, TEACHER_STEPS + 1)[:-1].tolist()
    scale = 2.0

    def run_student():
        with torch.no_grad(), setups.autocast(setup):
            return codec.decode(few.sample(student, text.encode(prompts), noise, sampler="euler"))

    def run_teacher():
        with torch.no_grad(), setups.autocast(setup):
            cond = text.encode(prompts)
            uncond = None if teacher.has_guidance_input else text.encode([""])
            return codec.decode(teacher_sample(teacher, cond, uncond, noise, sigmas, scale))

    def timed(*fns) -> list[float]:
        """Median seconds of each fn, the calls interleaved so that a change in the machine's load falls on all."""
        out = [[] for _ in fns]
        for _ in range(repeats):
            for times, fn in zip(out, fns):
                t0 = now(dev)
                fn()
                times.append(now(dev) - t0)
        return [statistics.median(t) for t in out]

    def forward_alone(model, guided: bool):
        from senseflow.models.base import guided_velocity

        cond = text.encode(prompts)
        uncond = None if teacher.has_guidance_input else text.encode([""])
        sigma = torch.full((batch_size,), 0.5, device=dev)

        def forward():
            with setups.autocast(setup):
                return guided_velocity(model, noise, sigma, cond, uncond, scale) if guided else model(noise, sigma, cond)

        return forward

    run_student()  # warm-up
    with torch.no_grad(), setups.autocast(setup):
        cond = text.encode(prompts)
        teacher_sample(teacher, cond, None if teacher.has_guidance_input else text.encode([""]), noise,
                       sigmas[:2], scale)
    s, t = timed(run_student, run_teacher)
    with torch.no_grad():
        fs, ft = timed(forward_alone(student, False), forward_alone(teacher, True))
    evals_t = TEACHER_STEPS * (1 if teacher.has_guidance_input else 2)
    limit = evals_t / few.num_steps
    batch_limit = TEACHER_STEPS * ft / (few.num_steps * fs)
    return {"world": setup.world, "teacher_params": setup.params, "batch_size": batch_size, "device": str(dev),
            "resolution": cfg.model.resolution,
            "student_steps": few.num_steps, "teacher_steps": TEACHER_STEPS,
            "teacher_guidance": "embedded" if teacher.has_guidance_input else "cfg",
            "teacher_evaluations": evals_t, "student_ms": round(1000 * s, 2), "teacher_ms": round(1000 * t, 2),
            "speedup": round(t / s, 2), "limit": limit, "efficiency": round(t / s / limit, 3),
            "target_efficiency": 0.88, "repeats": repeats,
            "student_forward_ms": round(1000 * fs, 2), "teacher_guided_forward_ms": round(1000 * ft, 2),
            "limit_at_this_batch": round(batch_limit, 2), "efficiency_at_this_batch": round(t / s / batch_limit, 3)}
