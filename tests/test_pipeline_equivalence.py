"""Our adapters + text encoders + Euler loop reproduce each diffusers pipeline (tiny random models).

For each family the pipeline and our bundle share the same module objects (tiny_pipeline(bundle=...)). Our
loop is the project's: flow.euler_step on models.base.guided_velocity, starting from the same seeded
noise, over the same sigmas as the pipeline's scheduler. The final latents must agree to float tolerance.
"""

from __future__ import annotations

import pytest
import torch

from senseflow import flow
from senseflow.models import guided_velocity, pipeline_from_bundle
from senseflow.models.flux import unpack_latents
from senseflow.models.loading import bundle_from_components, default_scheduler
from senseflow.models.sdxl import latent_scale, sigma_from_alphas_cumprod
from senseflow.models.tiny import T5_MAX_LENGTH, tiny_bundle, tiny_components, tiny_pipeline

PROMPTS = ["a red cat", "a photo of a small dog eating a burger"]
RES = 32
ATOL = 1e-4


def _noise(shape, seed=0):
    # diffusers' randn_tensor with one CPU generator draws exactly this
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _euler(bundle, x, sigmas, cond, uncond, scale):
    b = x.shape[0]
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        s_vec = torch.full((b,), float(s))
        v = guided_velocity(bundle.teacher, x, s_vec, cond, uncond, scale)
        x = flow.euler_step(x, v, s_vec, torch.full((b,), float(s_next)))
    return x


@pytest.fixture(scope="module")
def sd3():
    bundle = tiny_bundle("sd3", RES)
    return bundle, tiny_pipeline("sd3", bundle=bundle)


@pytest.fixture(scope="module")
def flux():
    bundle = tiny_bundle("flux", RES)
    return bundle, tiny_pipeline("flux", bundle=bundle)


@pytest.fixture(scope="module")
def sdxl():
    return tiny_bundle("sdxl", RES)


# ----------------------------------------------------------------------------- SD3 / SD3.5
def test_sd3_euler_loop_matches_pipeline(sd3):
    bundle, pipe = sd3
    steps, cfg = 3, 4.5
    ref = pipe(prompt=PROMPTS, height=RES, width=RES, num_inference_steps=steps, guidance_scale=cfg,
               max_sequence_length=T5_MAX_LENGTH, generator=torch.Generator().manual_seed(0),
               output_type="latent").images
    sigmas = pipe.scheduler.sigmas
    # The scheduler's schedule is linspace over the (shift-3) training table's range, shifted again by 3.
    ours = flow.shift(torch.linspace(1.0, float(bundle.sigma_table[0]), steps), 3.0)
    torch.testing.assert_close(sigmas[:-1], ours, atol=1e-6, rtol=0)
    te = bundle.text_encoder
    x = _euler(bundle, _noise(ref.shape), sigmas, te.encode(PROMPTS), te.encode([""]), cfg)
    assert ref.abs().max() > 0.5  # a real, non-degenerate trajectory
    torch.testing.assert_close(x, ref, atol=ATOL, rtol=0)
    # CFG really mattered: w = 1 gives another result
    x1 = _euler(bundle, _noise(ref.shape), sigmas, te.encode(PROMPTS), te.encode([""]), 1.0)
    assert (x1 - ref).abs().max() > 1e-2


def test_sd3_encode_prompt_matches_pipeline(sd3):
    bundle, pipe = sd3
    pe, ne, pp, npp = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=True,
                                         max_sequence_length=T5_MAX_LENGTH)
    cond, uncond = bundle.text_encoder.encode(PROMPTS), bundle.text_encoder.encode([""])
    assert cond.prompt_embeds.shape == (2, 77 + T5_MAX_LENGTH, 96)  # CLIP 32 + 48 padded to T5's 96
    torch.testing.assert_close(cond.prompt_embeds, pe, atol=0, rtol=0)
    torch.testing.assert_close(cond.pooled, pp, atol=0, rtol=0)
    torch.testing.assert_close(uncond.expand_to(2).prompt_embeds, ne, atol=1e-6, rtol=0)
    torch.testing.assert_close(uncond.expand_to(2).pooled, npp, atol=1e-6, rtol=0)
    # the zero padding of the CLIP part is really there
    assert cond.prompt_embeds[:, :77, 80:].abs().max() == 0


def test_sd3_without_t5_matches_pipeline():
    comps = tiny_components("sd3", RES)
    comps["text_encoder_3"] = comps["tokenizer_3"] = None
    bundle = bundle_from_components("sd3", comps, resolution=RES, max_sequence_length=T5_MAX_LENGTH)
    pipe = pipeline_from_bundle(bundle)
    pe, _, pp, _ = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=False,
                                      max_sequence_length=T5_MAX_LENGTH)
    cond = bundle.text_encoder.encode(PROMPTS)
    torch.testing.assert_close(cond.prompt_embeds, pe, atol=0, rtol=0)
    torch.testing.assert_close(cond.pooled, pp, atol=0, rtol=0)
    assert cond.prompt_embeds[:, 77:].abs().max() == 0  # the T5 part is zeros


# ----------------------------------------------------------------------------- FLUX
def test_flux_euler_loop_matches_pipeline(flux):
    bundle, pipe = flux
    steps, guidance = 3, 3.5
    ref = pipe(prompt=PROMPTS, height=RES, width=RES, num_inference_steps=steps, guidance_scale=guidance,
               max_sequence_length=T5_MAX_LENGTH, generator=torch.Generator().manual_seed(0),
               output_type="latent").images
    c, h, w = bundle.latent_shape
    assert ref.shape == (2, h * w // 4, 4 * c)  # FluxPipeline returns packed latents
    ref = unpack_latents(ref, h, w)
    sigmas = pipe.scheduler.sigmas
    # FLUX's resolution-dependent shift, as the pipeline computes it, is flow.flux_shift
    ours = flow.flux_shift(torch.linspace(1.0, 1.0 / steps, steps), image_seq_len=h * w // 4)
    torch.testing.assert_close(sigmas[:-1], ours, atol=1e-6, rtol=0)
    cond = bundle.text_encoder.encode(PROMPTS)
    # pipeline noise is drawn unpacked (B, C, H, W), then packed
    x = _euler(bundle, _noise((2, c, h, w)), sigmas, cond, None, guidance)
    assert ref.abs().max() > 0.5
    torch.testing.assert_close(x, ref, atol=ATOL, rtol=0)
    # the embedded guidance is live: another scale, another result
    x8 = _euler(bundle, _noise((2, c, h, w)), sigmas, cond, None, 8.0)
    assert (x8 - ref).abs().max() > 1e-3


def test_flux_encode_prompt_matches_pipeline(flux):
    bundle, pipe = flux
    pe, pp, text_ids = pipe.encode_prompt(PROMPTS, max_sequence_length=T5_MAX_LENGTH)
    cond = bundle.text_encoder.encode(PROMPTS)
    torch.testing.assert_close(cond.prompt_embeds, pe, atol=0, rtol=0)
    torch.testing.assert_close(cond.pooled, pp, atol=0, rtol=0)
    assert cond.prompt_embeds.shape == (2, T5_MAX_LENGTH, 48) and cond.pooled.shape == (2, 32)


# ----------------------------------------------------------------------------- SDXL
# Why DDIM: with eta = 0 a DDIM step keeps the predicted x0_hat and eps_hat and re-mixes them at the next
# noise level, x_t' = sqrt(ab') x0_hat + sqrt(1 - ab') eps_hat. Divided by c' = sqrt(ab') + sqrt(1 - ab') this is
# x_s' = (1 - s') x0_hat + s' eps_hat, and since v = eps_hat - x0_hat is the same at both ends, that equals
# x_s + (s' - s) v: exactly flow.euler_step in our sigma coordinates. (Diffusers' EulerDiscreteScheduler
# steps in the Karras sigma = sqrt((1 - ab) / ab) instead, which is the same ODE but another parametrisation,
# so its steps are not our Euler steps.)
@pytest.mark.parametrize("spacing,steps", [("leading", 3), ("trailing", 4)])
def test_sdxl_euler_loop_matches_ddim_pipeline(sdxl, spacing, steps):
    bundle = sdxl
    scheduler = default_scheduler("sdxl", {"timestep_spacing": spacing})
    pipe = tiny_pipeline("sdxl", bundle=bundle, scheduler=scheduler)
    cfg = 5.0
    ref = pipe(prompt=PROMPTS, height=RES, width=RES, num_inference_steps=steps, guidance_scale=cfg,
               generator=torch.Generator().manual_seed(0), output_type="latent").images
    timesteps = pipe.scheduler.timesteps.tolist()
    if spacing == "trailing":
        assert timesteps == [999, 749, 499, 249]  # SenseFlow's SDXL anchors
    # DDIM steps from t to t - 1000 // steps; our sigma list must be that same chain
    stride = 1000 // steps
    assert all(a - stride == b for a, b in zip(timesteps[:-1], timesteps[1:]))
    table = bundle.sigma_table
    final = sigma_from_alphas_cumprod(pipe.scheduler.final_alpha_cumprod.reshape(1))[0]  # ab[0]: set_alpha_to_one=False
    sigmas = torch.stack([table[t] for t in timesteps] + [final])
    te = bundle.text_encoder
    # pipeline latents are DDPM latents x_t = c(s) x_s; DDIM's init_noise_sigma is 1
    x = _noise(ref.shape) / latent_scale(sigmas[0])
    x = _euler(bundle, x, sigmas, te.encode(PROMPTS), te.encode([""]), cfg)
    out = x * latent_scale(sigmas[-1])
    assert ref.abs().max() > 0.5
    torch.testing.assert_close(out, ref, atol=ATOL * max(1.0, float(ref.abs().max()) / 10), rtol=0)


def test_sdxl_encode_prompt_matches_pipeline(sdxl):
    bundle = sdxl
    pipe = tiny_pipeline("sdxl", bundle=bundle)
    pe, ne, pp, npp = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=True)
    cond, uncond = bundle.text_encoder.encode(PROMPTS), bundle.text_encoder.encode([""])
    torch.testing.assert_close(cond.prompt_embeds, pe, atol=0, rtol=0)
    torch.testing.assert_close(cond.pooled, pp, atol=0, rtol=0)
    # force_zeros_for_empty_prompt: the pipeline's negative branch is zeros, and so is our encode([""])
    assert ne.abs().max() == 0 and npp.abs().max() == 0
    assert uncond.prompt_embeds.abs().max() == 0 and uncond.pooled.abs().max() == 0
    torch.testing.assert_close(cond.extra["time_ids"], torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2))
    # time_ids order (original size, crop corner, target size; height before width) on a non-square size
    text_encoder_2 = bundle.text_encoder.text_encoder_2
    expected = pipe._get_add_time_ids((24, 40), (0, 0), (24, 40), dtype=torch.float32,
                                      text_encoder_projection_dim=text_encoder_2.config.projection_dim)
    saved, bundle.text_encoder.resolution = bundle.text_encoder.resolution, (24, 40)
    try:
        torch.testing.assert_close(bundle.text_encoder.time_ids(1), expected, atol=0, rtol=0)
    finally:
        bundle.text_encoder.resolution = saved
    # without force_zeros the unconditional branch is the encoding of "", as in the pipeline
    bundle.text_encoder.force_zeros_for_empty_prompt = False
    try:
        pipe = tiny_pipeline("sdxl", bundle=bundle)
        _, ne, _, npp = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=True)
        uncond = bundle.text_encoder.encode([""]).expand_to(2)
        assert ne.abs().max() > 0
        torch.testing.assert_close(uncond.prompt_embeds, ne, atol=1e-6, rtol=0)
        torch.testing.assert_close(uncond.pooled, npp, atol=1e-6, rtol=0)
    finally:
        bundle.text_encoder.force_zeros_for_empty_prompt = True
