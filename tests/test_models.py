"""Adapters, text encoders, VAE codec, sigma tables, loading and its errors, on tiny random models."""

from __future__ import annotations

import pytest
import torch

from senseflow import flow
from senseflow.models import (ModelNotAvailableError, guided_velocity, load_bundle, pipeline_from_bundle,
                              sdxl_sigma_table, sigma_table_for, tiny_bundle)
from senseflow.models.flux import GUIDANCE_PREFIX, image_position_ids, pack_latents, unpack_latents
from senseflow.models.sdxl import alpha_bar_from_sigma, latent_scale, sigma_to_t, t_to_sigma
from senseflow.models.tiny import T5_MAX_LENGTH

RES = 32


@pytest.fixture(scope="module")
def bundles():
    return {f: tiny_bundle(f, RES) for f in ("sd3", "flux", "sdxl")}


def _inputs(bundle, b=2, seed=0):
    rng = torch.Generator().manual_seed(seed)
    x = torch.randn((b, *bundle.latent_shape), generator=rng)
    sigma = torch.tensor([0.8, 0.3][:b])
    return x, sigma


# ----------------------------------------------------------------------------- bundles
@pytest.mark.parametrize("family,channels", [("sd3", 16), ("flux", 16), ("sdxl", 4)])
def test_tiny_bundle_shapes_and_frozen_teacher(bundles, family, channels):
    bundle = bundles[family]
    assert bundle.family == family and bundle.latent_shape == (channels, RES // 2, RES // 2)
    assert bundle.sigma_table.shape == (1000,)
    assert not any(p.requires_grad for p in bundle.teacher.parameters())
    assert not any(p.requires_grad for p in bundle.text_encoder.parameters())
    x, sigma = _inputs(bundle)
    cond = bundle.text_encoder.encode(["a red cat", "a dog"])
    guidance = torch.full((2,), 3.5) if bundle.teacher.has_guidance_input else None
    v = bundle.teacher(x, sigma, cond, guidance)
    assert v.shape == x.shape and v.dtype == x.dtype and torch.isfinite(v).all()
    # the prediction depends on the prompt and on sigma
    other = bundle.text_encoder.encode(["a blue horse", "an astronaut"])
    assert (bundle.teacher(x, sigma, other, guidance) - v).abs().max() > 1e-4
    assert (bundle.teacher(x, sigma.flip(0), cond, guidance) - v).abs().max() > 1e-4


@pytest.mark.parametrize("family", ["sd3", "flux", "sdxl"])
def test_bf16_bundles_run_and_return_the_input_dtype(family):
    bundle = tiny_bundle(family, RES, dtype=torch.bfloat16)
    x, sigma = _inputs(bundle)
    cond = bundle.text_encoder.encode(["a cat", ""])
    assert cond.prompt_embeds.dtype == torch.bfloat16
    guidance = torch.full((2,), 3.5) if bundle.teacher.has_guidance_input else None
    v = bundle.teacher(x, sigma, cond, guidance)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    student = bundle.teacher.student_copy()
    assert {p.dtype for p in student.parameters()} == {torch.bfloat16}
    assert student(x.bfloat16(), sigma, cond).dtype == torch.bfloat16


def test_tiny_bundle_is_deterministic_in_seed():
    a, b, c = tiny_bundle("flux", seed=3), tiny_bundle("flux", seed=3), tiny_bundle("flux", seed=4)
    pa, pb, pc = (dict(m.teacher.named_parameters()) for m in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert any(not torch.equal(pa[k], pc[k]) for k in pa)


def test_tiny_models_have_the_paper_teachers_features(bundles):
    assert bundles["flux"].teacher.backbone.config.guidance_embeds  # like FLUX.1-dev
    cfg = bundles["sd3"].teacher.backbone.config
    assert tuple(cfg.dual_attention_layers) == (0,) and cfg.qk_norm == "rms_norm"  # SD3.5 features
    assert bundles["sdxl"].teacher.backbone.config.addition_embed_type == "text_time"


def test_text_encoders_stay_frozen_and_in_eval(bundles):
    te = bundles["sd3"].text_encoder
    te.train()
    assert not te.training and not te.text_encoder.training and not te.text_encoder_3.training
    c = te.encode(["a cat"])
    assert not c.prompt_embeds.requires_grad


# ----------------------------------------------------------------------------- sigma tables
def test_sigma_tables_match_diffusers_training_tables():
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    sd3 = FlowMatchEulerDiscreteScheduler(shift=3.0)
    torch.testing.assert_close(sigma_table_for("sd3"), sd3.sigmas.flip(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(sigma_table_for("flux"), FlowMatchEulerDiscreteScheduler().sigmas.flip(0),
                               atol=1e-6, rtol=0)
    # SD3.5 anchors [1.0, 0.9, 0.75, 0.5] are indices 999/749/499/249 of the shift-3 table
    torch.testing.assert_close(sigma_table_for("sd3")[[999, 749, 499, 249]], torch.tensor([1.0, 0.9, 0.75, 0.5]),
                               atol=1e-6, rtol=0)
    ddim = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    ab = ddim.alphas_cumprod
    table = sdxl_sigma_table()
    torch.testing.assert_close(table, (1 - ab).sqrt() / (ab.sqrt() + (1 - ab).sqrt()), atol=1e-6, rtol=0)
    torch.testing.assert_close(alpha_bar_from_sigma(table), ab, atol=1e-6, rtol=1e-5)
    assert torch.all(table[1:] > table[:-1]) and 0.93 < float(table[999]) < 0.94  # DDPM never reaches sigma 1
    anchors = table[[999, 749, 499, 249]]
    assert torch.all(anchors[:-1] > anchors[1:])


def test_sdxl_sigma_t_round_trip():
    table = sdxl_sigma_table()
    t = torch.tensor([0, 1, 249, 499, 749, 998, 999])
    assert torch.equal(sigma_to_t(table[t], table), t.float())  # exact on table entries
    frac = torch.tensor([0.25, 17.5, 333.3, 640.75, 998.9])
    torch.testing.assert_close(sigma_to_t(t_to_sigma(frac, table), table), frac, atol=1e-3, rtol=0)
    s = torch.linspace(float(table[0]), float(table[-1]), 101)
    torch.testing.assert_close(t_to_sigma(sigma_to_t(s, table), table), s, atol=1e-6, rtol=0)
    # beyond the DDPM chain's noisiest sigma the UNet timestep is clamped
    assert sigma_to_t(torch.tensor([0.99]), table).item() == 999
    # x_t = c * x_s: with x_s = (1-s) x0 + s eps this is sqrt(ab) x0 + sqrt(1-ab) eps
    s = table[[10, 500, 990]]
    ab = alpha_bar_from_sigma(s)
    torch.testing.assert_close(latent_scale(s) * (1 - s), ab.sqrt())
    torch.testing.assert_close(latent_scale(s) * s, (1 - ab).sqrt())


def test_sdxl_velocity_is_the_epsilon_conversion(bundles):
    bundle = bundles["sdxl"]
    x, sigma = _inputs(bundle)
    cond = bundle.text_encoder.encode(["a cat", "a dog"])
    eps = bundle.teacher.epsilon(x, sigma, cond)
    v = bundle.teacher(x, sigma, cond)
    x0 = flow.x0_from_velocity(x, sigma, v)
    # x0 and eps reproduce x_s = (1 - s) x0 + s eps, and v = eps - x0
    torch.testing.assert_close(flow.interpolate(x0, eps, sigma), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, eps - x0, atol=1e-5, rtol=1e-5)
    # and the UNet saw the DDPM latent at the DDPM timestep
    s = sigma.view(-1, 1, 1, 1)
    direct = bundle.teacher.backbone(x * latent_scale(s), sigma_to_t(sigma, bundle.sigma_table),
                                     encoder_hidden_states=cond.prompt_embeds,
                                     added_cond_kwargs={"text_embeds": cond.pooled,
                                                        "time_ids": cond.extra["time_ids"]}).sample
    torch.testing.assert_close(eps, direct, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no guidance input"):
        bundle.teacher(x, sigma, cond, guidance=torch.ones(2))


# ----------------------------------------------------------------------------- FLUX
def test_flux_packing_matches_pipeline_layout():
    from diffusers import FluxPipeline

    x = torch.randn(2, 16, 8, 12)
    packed = pack_latents(x)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(x, 2, 16, 8, 12), atol=0, rtol=0)
    assert torch.equal(unpack_latents(packed, 8, 12), x)
    ids = image_position_ids(8, 12)
    torch.testing.assert_close(ids, FluxPipeline._prepare_latent_image_ids(2, 4, 6, "cpu", torch.float32))
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.randn(1, 4, 7, 8))


def test_flux_teacher_needs_guidance(bundles):
    bundle = bundles["flux"]
    x, sigma = _inputs(bundle)
    cond = bundle.text_encoder.encode(["a cat", "a dog"])
    assert bundle.teacher.has_guidance_input
    with pytest.raises(ValueError, match="guidance"):
        bundle.teacher(x, sigma, cond)
    # guided_velocity passes the scale as the embedded guidance, in one forward
    v = guided_velocity(bundle.teacher, x, sigma, cond, None, 3.5)
    torch.testing.assert_close(v, bundle.teacher(x, sigma, cond, torch.full((2,), 3.5)))
    assert (v - guided_velocity(bundle.teacher, x, sigma, cond, None, torch.tensor([1.0, 8.0]))).abs().max() > 1e-4


def test_flux_student_copy_drops_guidance_and_copies_weights(bundles):
    teacher = bundles["flux"].teacher
    student = teacher.student_copy()
    assert type(student) is type(teacher)
    assert not student.has_guidance_input and not student.backbone.config.guidance_embeds
    assert teacher.has_guidance_input  # the teacher is untouched
    t_state, s_state = teacher.backbone.state_dict(), student.backbone.state_dict()
    guidance_keys = {k for k in t_state if k.startswith(GUIDANCE_PREFIX)}
    assert guidance_keys and set(s_state) == set(t_state) - guidance_keys
    for k, v in s_state.items():
        assert torch.equal(v, t_state[k]), k
        assert v.data_ptr() != t_state[k].data_ptr(), f"{k} shares storage with the teacher"
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    x, sigma = _inputs(bundles["flux"])
    cond = bundles["flux"].text_encoder.encode(["a cat", "a dog"])
    v = student(x, sigma, cond)
    assert v.shape == x.shape and torch.isfinite(v).all()
    with pytest.raises(ValueError, match="no guidance input"):
        student(x, sigma, cond, guidance=torch.ones(2))
    v.square().mean().backward()
    assert student.backbone.proj_out.weight.grad is not None
    # the student trains independently of the teacher
    with torch.no_grad():
        student.backbone.proj_out.weight.add_(1.0)
    assert not torch.equal(student.backbone.proj_out.weight, teacher.backbone.proj_out.weight)


def test_sd3_and_sdxl_student_copies_are_independent_and_trainable(bundles):
    for family in ("sd3", "sdxl"):
        teacher = bundles[family].teacher
        student = teacher.student_copy()
        assert all(p.requires_grad for p in student.parameters())
        x, sigma = _inputs(bundles[family])
        cond = bundles[family].text_encoder.encode(["a cat", "a dog"])
        torch.testing.assert_close(student(x, sigma, cond), teacher(x, sigma, cond))
        p_t, p_s = next(teacher.parameters()), next(student.parameters())
        assert p_t.data_ptr() != p_s.data_ptr()


# ----------------------------------------------------------------------------- VAE codec
@pytest.mark.parametrize("family", ["sd3", "flux", "sdxl"])
def test_vae_codec_round_trip_and_factors(bundles, family):
    bundle = bundles[family]
    codec = bundle.codec
    pixels = torch.rand(2, 3, RES, RES) * 2 - 1
    z = codec.encode(pixels)
    assert z.shape == (2, *bundle.latent_shape)
    torch.testing.assert_close(codec.encode(pixels), z, atol=0, rtol=0)  # deterministic (posterior mean)
    mean = codec.vae.encode(pixels).latent_dist.mean
    shift = codec.vae.config.shift_factor or 0.0
    torch.testing.assert_close(z, (mean - shift) * codec.vae.config.scaling_factor)
    expected = {"sd3": (1.5305, 0.0609), "flux": (0.3611, 0.1159), "sdxl": (0.13025, 0.0)}[family]
    assert (codec.scaling_factor, codec.shift_factor) == pytest.approx(expected)
    out = codec.decode(z)
    assert out.shape == pixels.shape
    torch.testing.assert_close(out, codec.vae.decode(mean).sample, atol=1e-5, rtol=1e-5)
    # frozen weights, but the decoder passes gradients to its input (GAN loss of the generator)
    z = z.clone().requires_grad_(True)
    codec.decode(z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in codec.parameters())


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize("family", ["sd3", "sdxl"])
def test_load_bundle_from_local_diffusers_dir(bundles, tmp_path, family):
    bundle = bundles[family]
    pipeline_from_bundle(bundle).save_pretrained(tmp_path)
    loaded = load_bundle(family, tmp_path, resolution=RES, max_sequence_length=T5_MAX_LENGTH)
    assert loaded.latent_shape == bundle.latent_shape
    torch.testing.assert_close(loaded.sigma_table, bundle.sigma_table, atol=0, rtol=0)
    prompts = ["a red cat", ""]
    c0, c1 = bundle.text_encoder.encode(prompts), loaded.text_encoder.encode(prompts)
    torch.testing.assert_close(c1.prompt_embeds, c0.prompt_embeds, atol=0, rtol=0)
    x, sigma = _inputs(bundle)
    torch.testing.assert_close(loaded.teacher(x, sigma, c1), bundle.teacher(x, sigma, c0), atol=1e-6, rtol=0)
    assert not any(p.requires_grad for p in loaded.teacher.parameters())
    if family == "sd3":  # without T5: loads without text_encoder_3/, T5 states are zeros
        no_t5 = load_bundle(family, tmp_path, resolution=RES, max_sequence_length=T5_MAX_LENGTH, with_t5=False)
        assert no_t5.text_encoder.text_encoder_3 is None
        assert no_t5.text_encoder.encode(["a cat"]).prompt_embeds[:, 77:].abs().max() == 0


def test_offline_unknown_hub_id_gives_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = "senseflow-tests/no-such-model"
    with pytest.raises(ModelNotAvailableError) as info:
        load_bundle("sd3", model, resolution=RES)
    msg = str(info.value)
    assert model in msg and f"hf download {model}" in msg and "huggingface-cli download" in msg
    assert "HF_HOME" in msg and "transformer/" in msg


def test_empty_or_missing_directory_gives_one_clear_error(tmp_path):
    with pytest.raises(ModelNotAvailableError) as info:
        load_bundle("flux", tmp_path, resolution=RES)
    msg = str(info.value)
    assert str(tmp_path) in msg and "transformer/" in msg and "text_encoder_2/" in msg and "--local-dir" in msg
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_bundle("sdxl", tmp_path / "nope", resolution=RES)


def test_missing_component_and_empty_tokenizer_are_named(bundles, tmp_path):
    import shutil

    from transformers import CLIPTokenizer

    pipeline_from_bundle(bundles["sdxl"]).save_pretrained(tmp_path)
    shutil.rmtree(tmp_path / "vae")
    with pytest.raises(ModelNotAvailableError, match=r"component vae/ is not available"):
        load_bundle("sdxl", tmp_path, resolution=RES)
    # a tokenizer folder holding an (almost) empty vocabulary, as transformers 5 builds from an uncached hub id
    pipeline_from_bundle(bundles["sdxl"]).save_pretrained(tmp_path)
    shutil.rmtree(tmp_path / "tokenizer_2")
    CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1}, merges=[]).save_pretrained(tmp_path / "tokenizer_2")
    with pytest.raises(ModelNotAvailableError, match=r"tokenizer_2/ is not available .*empty"):
        load_bundle("sdxl", tmp_path, resolution=RES)


def test_load_bundle_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="family"):
        load_bundle("sd4", tmp_path, resolution=RES)
    with pytest.raises(ValueError, match="T5"):
        load_bundle("flux", tmp_path, resolution=RES, with_t5=False)
