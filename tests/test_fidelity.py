"""What docs/FIDELITY.md says we reproduce of the authors' released trainers and of DMD2's: the presets as
`senseflow config show` prints them, and each mechanism on tiny random models (CPU, no weights, no downloads)."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from senseflow import config as C
from senseflow import flow, losses
from senseflow.components import build_components
from senseflow.distill import Distiller, step_rng

TINY = ["model.tiny=true", "model.resolution=32", "train.batch_size=2", "eval.metrics=[]",
        "train.mixed_precision=no", "gan.layers=null", "optim.eight_bit=false"]


def _shown(preset: str, capsys) -> dict:
    from senseflow.cli import main

    capsys.readouterr()
    assert main(["config", "show", preset]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


# The authors' released values (XingtongGe/SenseFlow at f7da31b7: trainer_*_senseflow.py train()/build_model(),
# get_isg_guidance(), configs/) and DMD2's (tianweiy/DMD2 experiments/sdxl, main/train_sd.py).
AUTHORS = {
    "sd35-large-senseflow": {
        "generator.anchor_indices": [999, 749, 499, 249], "generator.backsim_prob": 0.5,
        "generator.pure_noise_start": False, "dmd.timestep.low": 20, "dmd.timestep.high": 980,
        "ida.enabled": True, "ida.lam": 0.97, "isg.enabled": True, "isg.form": "paper", "isg.weight": 1.0,
        "isg.margin": 50, "isg.guidance.low": 5.0, "isg.guidance.high": 5.0, "isg.huber_c": 0.001,
        "gan.kind": "vfm", "gan.weight": 0.1, "gan.omega": "sd35", "gan.layers": [2, 5, 8, 10, 14, 19, 23],
        "gan.text_condition": "clip", "gan.text_encoder": "openai/clip-vit-large-patch14", "gan.head_channels": 64,
        "gan.diffaug": ["color", "translation", "cutout"], "gan.reference": True, "optim.ttur": 5,
        "optim.lr_generator": 1e-6, "optim.lr_fake": 1e-6, "optim.lr_disc": 1e-6, "optim.grad_clip": 1.0,
        "data.latents": "posterior_sample", "gan.d_receives_g_gradient": False, "gan.backbone": "facebook/dinov2-large",
        "dmd.guidance.low": 3.0, "dmd.guidance.high": 10.0, "fake_score.timestep.kind": "logit_normal",
        "fake_score.timestep.shift": 3.0, "train.iterations": 27000, "train.batch_size": 1,
        "eval.num_samples": 5000, "eval.samplers": ["stochastic", "euler"]},
    "sd35-medium-senseflow": {
        "ida.lam": 0.98, "isg.weight": 0.5, "isg.guidance.low": 2.0, "isg.guidance.high": 4.0, "optim.ttur": 10,
        "dmd.guidance.low": 2.0, "dmd.guidance.high": 8.0, "gan.weight": 0.1, "gan.omega": "sd35"},
    "flux-dev-senseflow": {
        "generator.anchor_indices": [999, 903, 758, 511], "generator.backsim_prob": 0.5, "ida.lam": 0.97,
        "isg.form": "paper", "isg.margin": 20, "gan.weight": 2.0, "gan.omega": "paper", "gan.text_condition": "clip",
        "optim.ttur": 5, "optim.lr_generator": 1e-5, "data.latents": "posterior_sample", "dmd.timestep.kind": "logit_normal",
        "dmd.guidance.low": 1.0, "dmd.guidance.high": 8.0, "isg.guidance.low": 1.0, "isg.guidance.high": 8.0,
        "gan.layers": [2, 5, 8, 10, 14, 19, 23], "train.iterations": 12000},
    "sdxl-senseflow": {
        "generator.anchor_indices": [999, 749, 499, 249], "generator.backsim_prob": 0.5,
        "generator.pure_noise_start": True, "dmd.guidance.low": 8.0, "dmd.guidance.high": 8.0,
        "fake_score.loss": "epsilon", "ida.enabled": False, "isg.form": "teacher_x0", "isg.weight": 0.2,
        "isg.guidance.low": 3.0, "isg.guidance.high": 15.0, "isg.distance": "pseudo_huber", "isg.huber_c": 0.001,
        "gan.weight": 0.5, "gan.omega": "sdxl", "gan.text_condition": "clip", "optim.ttur": 5,
        "optim.lr_generator": 1e-6, "dmd.timestep.low": 20, "dmd.timestep.high": 980, "fake_score.timestep.low": 0,
        "fake_score.timestep.high": 999, "train.iterations": 18000},
    "sdxl-dmd2": {  # DMD2's own SDXL recipe
        "method": "dmd2", "generator.backsim_prob": 1.0, "generator.pure_noise_start": True, "ida.enabled": False,
        "isg.enabled": False, "gan.kind": "dmd2", "gan.weight": 0.005, "gan.disc_weight": 0.01, "gan.omega": "one",
        "gan.train_fake_score_body": True, "dmd.guidance.low": 8.0, "dmd.guidance.high": 8.0,
        "dmd.timestep.low": 20, "dmd.timestep.high": 980, "fake_score.timestep.low": 0,
        "fake_score.timestep.high": 999, "optim.lr_generator": 5e-7, "optim.lr_fake": 5e-7, "optim.lr_disc": 5e-7,
        "optim.weight_decay": 0.01, "optim.grad_clip": 10.0, "optim.ttur": 5},
    "sdxl-dmd2-authors": {  # the authors' DMD2-SDXL trainer: DMD2's losses, no backward simulation
        "method": "dmd2", "generator.backsim_prob": 0.0, "generator.pure_noise_start": True, "gan.kind": "dmd2",
        "gan.weight": 0.005, "gan.disc_weight": 0.01, "gan.train_fake_score_body": True, "optim.lr_generator": 1e-6,
        "optim.grad_clip": 1.0, "optim.ttur": 5},
    "sd35-large-dmd2": {"generator.backsim_prob": 1.0, "gan.kind": "dmd2", "gan.weight": 0.005,
                        "gan.disc_weight": 0.01, "gan.train_fake_score_body": True, "ida.enabled": False,
                        "isg.enabled": False},
    "flux-dev-dmd2": {"generator.backsim_prob": 1.0, "gan.weight": 0.005, "gan.disc_weight": 0.01,
                      "gan.train_fake_score_body": True},
}


@pytest.mark.parametrize("preset", sorted(AUTHORS))
def test_config_show_prints_the_authors_values(preset, capsys):
    shown = _shown(preset, capsys)
    wrong = {k: (_get(shown, k), v) for k, v in AUTHORS[preset].items() if _get(shown, k) != v}
    assert not wrong, wrong


def test_digits_presets_take_the_authors_structure_with_the_worlds_own_text(capsys):
    d = _shown("digits-senseflow", capsys)
    assert d["gan"]["text_condition"] == "pooled_per_head" and d["generator"]["pure_noise_start"] is False
    dm = _shown("digits-dmd2", capsys)
    assert dm["generator"]["backsim_prob"] == 1.0 and dm["gan"]["train_fake_score_body"] is True
    assert dm["optim"]["lr_disc"] == dm["optim"]["lr_fake"]


def test_switches_refuse_the_other_discriminator():
    with pytest.raises(C.ConfigError, match="gan.kind=vfm"):
        C.resolve("sdxl-dmd2", ["gan.d_receives_g_gradient=true"])
    with pytest.raises(C.ConfigError, match="gan.kind=dmd2"):
        C.resolve("sdxl-senseflow", ["gan.train_fake_score_body=true"])


# ----------------------------------------------------------------------------- tiny-model mechanisms
def _distiller(preset: str, *over: str, seed: int = 0):
    cfg = C.resolve(preset, [*TINY, *over])
    comps = build_components(cfg)
    b = comps.bundle
    torch.manual_seed(seed)  # the heads' initialisation
    d = Distiller(cfg, b.teacher, b.text_encoder, b.codec, b.sigma_table, make_discriminator=comps.make_discriminator)
    return cfg, comps, d


def _batch(cfg, comps, it: int = 0):
    return comps.data.batch(it, cfg.train.batch_size, step_rng(cfg.train.seed, it, stream=2))


def _anchor(it: int, seed: int = 0, steps: int = 4) -> int:
    return int(torch.randint(steps, (1,), generator=step_rng(seed, it, stream=0)))


def test_d_steps_on_every_iteration_also_where_omega_is_zero():
    """The authors step D every iteration; with omega 'paper' the first anchor (sigma 1) has omega 0: D's loss
    and gradient are 0 there, yet its optimizer steps (Adam's momentum moves the heads)."""
    cfg, comps, d = _distiller("sd35-large-senseflow", "gan.omega=paper", "optim.ttur=1000", "isg.enabled=false",
                               "gan.text_condition=pooled_per_head")
    its = [i for i in range(1, 40) if _anchor(i) > 0][:1] + [i for i in range(1, 40) if _anchor(i) == 0][:1]
    first = d.step(its[0], _batch(cfg, comps, its[0]))
    assert first["loss_disc"] != 0
    before = [p.detach().clone() for p in d.discriminator.trainable_parameters()]
    m = d.step(its[1], _batch(cfg, comps, its[1]))
    assert m["anchor"] == 0 and m["loss_disc"] == 0.0 and m["grad_norm_d"] == 0.0
    steps = {int(s["step"]) for s in d.opt_d.state.values()}
    assert steps == {2}  # both iterations stepped D
    moved = [not torch.equal(a, p.detach()) for a, p in zip(before, d.discriminator.trainable_parameters())]
    assert any(moved)


def test_discriminator_judges_the_paired_real_image_with_it_as_reference(monkeypatch):
    """Real = the batch's image, reference = the same image (the authors' net_d(gt, clipcond, ori_image));
    fake = the decoded generator sample, judged against that reference; the text embedding is D's own."""
    cfg, comps, d = _distiller("sd35-large-senseflow", "optim.ttur=1000", "isg.enabled=false")
    batch = _batch(cfg, comps, 1)
    seen = {}
    real_fn = d.discriminator.real_fake_logits

    def spy(real, fake, text, ref_images=None, **kw):
        seen.update(real=real, ref=ref_images, text=text)
        return real_fn(real, fake, text, ref_images=ref_images, **kw)

    monkeypatch.setattr(d.discriminator, "real_fake_logits", spy)
    d.step(1, batch)
    assert seen["real"] is batch.pixels and seen["ref"] is batch.pixels
    assert torch.equal(seen["text"], d.discriminator.encode_text(batch.prompts))  # CLIP (tiny), not the teacher's


def _grads_at_d_clip(d, batch, it):
    seen = {}
    clip = d._clip
    d_ids = {id(p) for p in d.discriminator.trainable_parameters()}

    def spy(params):
        params = list(params)
        if params and id(params[0]) in d_ids and "d" not in seen:
            seen["d"] = [None if p.grad is None else p.grad.clone() for p in d.discriminator.trainable_parameters()]
        if "after_g" not in seen and params and id(params[0]) not in d_ids:
            seen["after_g"] = [p.grad for p in d.discriminator.trainable_parameters()]
        return clip(params)

    d._clip = spy
    m = d.step(it, batch)
    return seen, m


def test_the_authors_unfrozen_discriminator_switch_adds_the_generators_gradient_to_d_only_when_on():
    """gan.d_receives_g_gradient reproduces the authors' trainers: D is not frozen in the generator's pass
    and its gradients are not cleared before its own step. Off (default): D's step sees its own gradient only."""
    over = ["gan.weight=2.0", "gan.omega=one", "optim.ttur=1", "isg.enabled=false", "ida.enabled=false",
            "gan.text_condition=pooled_per_head"]
    runs = {}
    for on in (False, True):
        cfg, comps, d = _distiller("flux-dev-senseflow", *over, f"gan.d_receives_g_gradient={str(on).lower()}")
        seen, m = _grads_at_d_clip(d, _batch(cfg, comps), 0)
        runs[on] = (seen, m, [p.detach().clone() for p in d.generator.parameters()])
    off, on = runs[False], runs[True]
    assert all(g is None for g in off[0]["after_g"])                       # clean: nothing left after G's step
    assert any(g is not None and float(g.abs().sum()) > 0 for g in on[0]["after_g"])
    assert off[1]["loss_adv"] == on[1]["loss_adv"]
    for a, b in zip(off[2], on[2]):                                       # G's own update is the same
        assert torch.equal(a, b)
    own = torch.cat([g.flatten() for g in off[0]["d"] if g is not None])
    both = torch.cat([g.flatten() for g in on[0]["d"] if g is not None])
    stray = both - own
    assert float(stray.norm()) > 1e-3 * float(own.norm())                  # the stray gradient is there only when on


def test_the_authors_sdxl_isg_is_the_teacher_x0_form_and_ignores_the_midpoint():
    """Their SDXL ISG, written in DDPM coordinates: teacher x0 at t (CFG eps), re-noised to t_mid with the
    teacher's eps, x0 read back with that eps, both it and G's x0 re-noised to t_prev with G's eps at t_mid;
    pseudo-Huber of the difference. It equals isg_teacher_x0_loss with scale sqrt(alpha_bar(t_prev)) for
    every t_mid."""
    from senseflow.models.sdxl import ddpm_alphas_cumprod

    ab = ddpm_alphas_cumprod().double()
    rng = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 4, 8, 8, generator=rng, dtype=torch.float64)
    eps_teacher, eps_g = (torch.randn(2, 4, 8, 8, generator=rng, dtype=torch.float64) for _ in range(2))
    t, t_prev = 749, 499

    def x0_of(x, eps, step):
        return (x - (1 - ab[step]).sqrt() * eps) / ab[step].sqrt()

    def noised(x0, eps, step):
        return ab[step].sqrt() * x0 + (1 - ab[step]).sqrt() * eps

    x0_teacher, x0_gen = x0_of(x_t, eps_teacher, t), x0_of(x_t, eps_g, t)
    values = []
    for t_mid in (520, 600, 728):
        eps_mid = torch.randn(2, 4, 8, 8, generator=rng, dtype=torch.float64)  # G's eps at the midpoint
        x_mid = noised(x0_teacher, eps_teacher, t_mid)
        target = noised(x0_of(x_mid, eps_teacher, t_mid), eps_mid, t_prev)
        direct = noised(x0_gen, eps_mid, t_prev)
        values.append(float(torch.mean(torch.sqrt((direct - target) ** 2 + 1e-6) - 1e-3)))
    ours = float(losses.isg_teacher_x0_loss(x0_gen, x0_teacher, float(ab[t_prev].sqrt()), "pseudo_huber", 1e-3))
    assert max(values) - min(values) < 1e-9
    assert math.isclose(ours, values[0], rel_tol=1e-5)


def test_sdxl_isg_teacher_x0_in_a_distiller_step_scales_by_the_segment_ends_alpha_bar(monkeypatch):
    from senseflow.models.sdxl import alpha_bar_from_sigma

    cfg, comps, d = _distiller("sdxl-senseflow", "optim.ttur=1", "gan.kind=none")
    batch = _batch(cfg, comps)
    captured = {}
    real = losses.isg_teacher_x0_loss

    def spy(x0_g, x0_t, scale, kind, c):
        captured.update(x0_g=x0_g.detach(), x0_t=x0_t, scale=scale)
        return real(x0_g, x0_t, scale, kind, c)

    monkeypatch.setattr(losses, "isg_teacher_x0_loss", spy)
    m = d.step(0, batch)
    k = int(m["anchor"])

    idx_prev = max(d.few_step.index(k + 1), 0)
    assert math.isclose(captured["scale"], float(alpha_bar_from_sigma(d.sigma_table[idx_prev]).sqrt()), rel_tol=1e-6)
    assert m["loss_isg"] > 0 and captured["x0_t"].shape == captured["x0_g"].shape


def test_sdxl_first_anchor_is_unit_variance_pure_noise_in_the_unets_input():
    from senseflow.models.sdxl import latent_scale

    cfg, comps, d = _distiller("sdxl-senseflow", "gan.kind=none")
    batch = _batch(cfg, comps)
    s0 = d.few_step.sigma(0)
    assert s0 < 0.95  # SDXL's DDPM chain ends below sigma 1
    rng1, rng2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x = d.generator_input(batch, 0, False, rng1)
    noise = torch.randn(batch.latents.shape, generator=rng2)
    assert torch.allclose(x * latent_scale(s0), noise, atol=1e-6)        # the UNet reads the noise itself
    # backward simulation and sampling start from the same input
    rng1, rng2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    start = d.few_step.backward_simulate(d.generator, batch.cond, 0, tuple(batch.latents.shape), rng=rng1)
    assert torch.allclose(start * latent_scale(s0), torch.randn(batch.latents.shape, generator=rng2), atol=1e-6)
    # off: the flow point (1 - s0) x0 + s0 noise, whose UNet input has variance c(s0)^2 s0^2 + ... != 1
    cfg2, comps2, d2 = _distiller("sdxl-senseflow", "gan.kind=none", "generator.pure_noise_start=false")
    x2 = d2.generator_input(batch, 0, False, torch.Generator().manual_seed(3))
    assert torch.allclose(x2, flow.interpolate(batch.latents, noise, torch.full((2,), s0)), atol=1e-6)


def test_backward_simulation_is_dmd2s_in_ddpm_coordinates():
    """DMD2 (and the authors' SDXL trainers): from unit noise at t = 999, predict x0 with the student's eps,
    re-noise to the next anchor with fresh noise, k times. Ours in sigma coordinates, scaled by c(sigma_k),
    is the same DDPM latent."""
    from senseflow.models.sdxl import ddpm_alphas_cumprod, latent_scale

    cfg, comps, d = _distiller("sdxl-dmd2", "model.dtype=float32")  # the test drives the raw UNet in fp32
    batch = _batch(cfg, comps)
    shape, k = tuple(batch.latents.shape), 2
    ours = d.few_step.backward_simulate(d.generator, batch.cond, k, shape, rng=torch.Generator().manual_seed(5))
    ab = ddpm_alphas_cumprod()
    rng = torch.Generator().manual_seed(5)
    x_t = torch.randn(shape, generator=rng)
    unet = d.generator.backbone
    added = {"text_embeds": batch.cond.pooled, "time_ids": batch.cond.extra["time_ids"]}
    with torch.no_grad():
        for t, t_next in zip(cfg.generator.anchor_indices[:k], cfg.generator.anchor_indices[1:k + 1]):
            eps = unet(x_t, torch.full((shape[0],), float(t)), encoder_hidden_states=batch.cond.prompt_embeds,
                       added_cond_kwargs=added, return_dict=False)[0]
            x0 = (x_t - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
            x_t = ab[t_next].sqrt() * x0 + (1 - ab[t_next]).sqrt() * torch.randn(shape, generator=rng)
    assert torch.allclose(ours * latent_scale(d.few_step.sigma(k)), x_t, atol=1e-4)


def test_real_latents_are_drawn_from_the_vae_posterior():
    cfg, comps, _ = _distiller("sd35-large-senseflow", "gan.kind=none", "model.dtype=float32")  # raw VAE calls in fp32
    codec = comps.bundle.codec
    a = _batch(cfg, comps)
    b = _batch(cfg, comps)
    assert torch.equal(a.latents, b.latents)  # a draw, but determined by the iteration's rng
    mean = codec.encode(a.pixels)  # the posterior mean (codec default)
    assert not torch.allclose(a.latents, mean)
    dist = codec.vae.encode(a.pixels).latent_dist
    z = (a.latents / codec.scaling_factor) + codec.shift_factor
    assert float(((z - dist.mean) / dist.std).std()) == pytest.approx(1.0, abs=0.1)  # standardised draw ~ N(0, 1)
    cfg_m, comps_m, _ = _distiller("sd35-large-senseflow", "gan.kind=none", "data.latents=posterior_mean", "model.dtype=float32")
    assert torch.allclose(_batch(cfg_m, comps_m).latents, mean, atol=1e-6)


def test_dmd2_classifier_loss_trains_the_fake_scores_body_as_dmd2_does():
    """-dmd2 presets: the classifier loss joins F's loss in one backward, so F's body gets its gradient; with
    gan.train_fake_score_body=false only the head does."""
    zero_fake = lambda v, eps, x0: (v * 0).sum()  # noqa: E731  isolates the classifier's share
    body_grad = {}
    for on in (True, False):
        cfg, comps, d = _distiller("sd35-large-dmd2", "optim.ttur=1000", f"gan.train_fake_score_body={str(on).lower()}")
        seen = {}
        clip = d._clip

        def spy(params, d=d, seen=seen):
            params = list(params)
            if "f" not in seen and any(p is q for p in params for q in d.fake_score.parameters()):
                seen["f"] = sum(float(p.grad.abs().sum()) for p in d.fake_score.parameters() if p.grad is not None)
            return clip(params)

        d._clip = spy
        keep = losses.fake_score_loss
        losses.fake_score_loss = zero_fake
        try:
            m = d.step(1, _batch(cfg, comps, 1))
        finally:
            losses.fake_score_loss = keep
        assert m["loss_disc"] > 0
        body_grad[on] = seen["f"]
    assert body_grad[True] > 0 and body_grad[False] == 0


def test_time_weights_are_the_authors_tables_at_every_anchor():
    """SD3.5: their timew = FlowMatchEuler(shift 3).sigmas[t]^2 at the anchor's index t; SDXL:
    sqrt(alphas_cumprod[t]); FLUX: (1 - sigma)^2."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from senseflow.models.sdxl import ddpm_alphas_cumprod, sdxl_sigma_table

    idx = torch.arange(0, 1000, 7)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    table = flow.sigma_table(1000, 3.0)
    assert torch.allclose(losses.omega(table[idx], "sd35"), sched.sigmas[idx].float() ** 2, atol=1e-6)
    assert torch.allclose(losses.omega(sdxl_sigma_table()[idx], "sdxl"), ddpm_alphas_cumprod()[idx].sqrt(), atol=1e-6)
    lin = flow.sigma_table(1000, 1.0)
    assert torch.allclose(losses.omega(lin[idx], "paper"), (1 - lin[idx]) ** 2)


def test_fake_score_losses_are_flow_matching_and_sdxls_epsilon_mse():
    rng = torch.Generator().manual_seed(0)
    v, eps, x0 = (torch.randn(3, 4, 2, 2, generator=rng) for _ in range(3))
    assert torch.allclose(losses.fake_score_loss(v, eps, x0), ((v - (eps - x0)) ** 2).mean())
    assert torch.allclose(losses.epsilon_loss(v, eps), ((v - eps) ** 2).mean())
    # SDXL: the epsilon the UNet predicts is recovered exactly from our velocity
    s = torch.full((3,), 0.3)
    x_t = flow.interpolate(x0, eps, s)
    assert torch.allclose(flow.noise_from_velocity(x_t, s, flow.velocity_target(x0, eps)), eps, atol=1e-5)


def test_iteration_schedule_ttur_anchor_and_backward_simulation_coin():
    """G steps when iteration % ttur == 0 (the authors' current_iter % GD with their 1-based counter is the same
    schedule shifted by one); the anchor is uniform over the K anchors and the backward-simulation coin has
    probability generator.backsim_prob (the Distiller draws both from its shared stream 0, rank-free)."""
    anchors, coins = [], []
    for it in range(4000):
        rng = step_rng(0, it, stream=0)
        anchors.append(int(torch.randint(4, (1,), generator=rng)))
        coins.append(bool(torch.rand(1, generator=rng) < 0.5))
    counts = torch.bincount(torch.tensor(anchors), minlength=4).float() / 4000
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.03)
    assert abs(sum(coins) / 4000 - 0.5) < 0.03
    cfg, comps, d = _distiller("sd35-large-senseflow", "optim.ttur=3", "gan.kind=none", "isg.enabled=false")
    assert [d.step(i, _batch(cfg, comps, i))["gen_step"] for i in range(4)] == [1.0, 0.0, 0.0, 1.0]


def test_dmd_timesteps_and_guidance_draws():
    from senseflow.config import GuidanceConfig, TimestepConfig
    from senseflow.distill import draw_guidance, draw_sigma

    table = flow.sigma_table(1000, 3.0)
    rng = torch.Generator().manual_seed(0)
    s = draw_sigma(TimestepConfig(kind="table_index", low=20, high=980), 20000, table, rng)
    assert float(s.min()) >= float(table[20]) and float(s.max()) <= float(table[980])
    assert set(s.unique().tolist()) <= set(table[20:981].tolist())  # table entries only (DMD2's integer t)
    w = draw_guidance(GuidanceConfig(low=3.0, high=15.0), 20000, rng)
    assert 3.0 <= float(w.min()) and float(w.max()) <= 15.0 and abs(float(w.mean()) - 9.0) < 0.1


def test_student_samplers_stochastic_renoises_x0_and_euler_steps():
    from senseflow.generator import FewStepGenerator

    class Lin(torch.nn.Module):  # v = x (any deterministic model will do)
        def forward(self, x, s, cond):
            return x

    fs = FewStepGenerator([999, 749, 499, 249], flow.sigma_table(1000, 3.0))
    noise = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    x = noise
    for k in range(4):
        x = flow.euler_step(x, x, fs.sigma(k), fs.sigma(k + 1))
    assert torch.allclose(fs.sample(Lin(), None, noise, "euler"), x)
    rng1, rng2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    x = noise
    for k in range(4):
        x0 = flow.x0_from_velocity(x, torch.full((2,), fs.sigma(k)), x)
        x = x0 if k == 3 else flow.renoise_step(x0, fs.sigma(k + 1), torch.randn(x.shape, generator=rng2))
    assert torch.allclose(fs.sample(Lin(), None, noise, "stochastic", rng1), x)


def test_every_row_of_fidelity_md_names_tests_that_exist():
    """docs/FIDELITY.md: every table row has a 'Pinned by' cell, and every test it names is defined."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "FIDELITY.md").read_text()
    defined: dict[str, set[str]] = {}
    for f in (root / "tests").glob("test_*.py"):
        defined[f.stem] = set(re.findall(r"^def (test_\w+)", f.read_text(), flags=re.M))
    alias = {"test_disc": "test_discriminators"}
    rows = [line for line in doc.splitlines() if line.startswith("| ") and not line.startswith("| Setting")]
    assert len(rows) > 40
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 6, row
        pinned = cells[-1]
        names = re.findall(r"`?(test_\w+)::(test_\w+)", pinned)
        shows = re.findall(r"config_show\[([\w*-]+)\]", pinned)
        assert names or shows, f"row without a pinning test: {row[:80]}"
        # a bare `test_x` after a file-qualified one in the same cell belongs to that file
        current = None
        for token in re.findall(r"(test_\w+::test_\w+|test_\w+)", pinned):
            if "::" in token:
                current, name = token.split("::")
            elif token in defined or token in alias:  # a file named on its own
                continue
            else:
                name = token
            assert current is not None, f"{name} is named without its file in: {pinned}"
            file = alias.get(current, current)
            assert name in defined[file], f"{file}::{name} named in FIDELITY.md does not exist"
        for preset in shows:
            assert preset == "*" or preset in AUTHORS, f"config_show[{preset}] has no entry in AUTHORS"


@pytest.mark.parametrize("preset", ["sd35-large-dmd2", "sd35-large-senseflow"])
def test_generator_step_under_gradient_checkpointing_equals_the_plain_one(preset):
    """The adversarial term freezes D (and, for DMD2's head, F's body) until after the backward, so
    non-reentrant checkpointing recomputes with the forward's requires_grad (it used to stop with
    CheckpointError on the DMD2 head) and the generator's update is the same as without checkpointing."""
    over = ("model.dtype=float32", "optim.ttur=1", "gan.weight=1.0", "gan.omega=one")
    weights = []
    for ckpt in (False, True):
        cfg, comps, d = _distiller(preset, *over)
        if ckpt:
            d.generator.enable_gradient_checkpointing()
            d.fake_score.enable_gradient_checkpointing()
        out = d.step(0, _batch(cfg, comps))
        assert out["gen_step"] == 1.0 and "loss_adv" in out
        weights.append({n: p.detach().clone() for n, p in d.generator.named_parameters()})
    for n, w in weights[0].items():
        torch.testing.assert_close(weights[1][n], w, rtol=1e-5, atol=1e-7, msg=n)
