"""`senseflow export` gives a student that the family's diffusers pipeline samples exactly like `senseflow sample`.

Tiny random SD3, FLUX and SDXL models stand in for the teachers. A run folder holds a perturbed copy of the
teacher as the student (so using the teacher's weights by mistake shows), `senseflow export` writes the
folder, and the pipeline, loaded from it (complete layout) or from the teacher's folder with the student's
backbone and scheduler, must reproduce `senseflow sample`'s latents on the same prompts and noise, step
through exactly the trained anchors, and the model card's own code must run.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from safetensors.torch import save_file

from senseflow import config as config_mod
from senseflow.cli import main
from senseflow.commands.run import load_student, sample_latents
from senseflow.models.tiny import T5_MAX_LENGTH, tiny_bundle, tiny_pipeline

PROMPTS = ["a red cat", "a photo of a small dog eating a burger"]
RES = 32
PRESETS = {"sd3": "sd35-large-senseflow", "flux": "flux-dev-senseflow", "sdxl": "sdxl-senseflow"}


def _run_folder(tmp_path, family, extra=()):
    cfg = config_mod.resolve(PRESETS[family], ["model.tiny=true", f"model.resolution={RES}", "model.dtype=float32",
                                               # fp32 students, so both samplers' sums agree to float precision
                                               "train.trainable_dtype=float32", *extra])
    run = tmp_path / "run"
    config_mod.save(cfg, run / "config.yaml")
    ck = run / "checkpoints" / "iter_0000010"
    ck.mkdir(parents=True)
    (ck / "trainer.json").write_text(json.dumps({"iteration": 10}))
    student = tiny_bundle(family, RES).teacher.student_copy()
    rng = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=rng))
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(ck / "generator.safetensors"))
    return cfg, run


def _export(run, out, *args):
    assert main(["export", str(run), str(out), *args]) == 0
    return json.loads((out / "senseflow.json").read_text())


def _pipeline_latents(pipe, family, info, sampler, latents=None):
    k = len(info["anchor_indices"])
    kw = dict(num_inference_steps=k) if info["default_schedule_exact"] else dict(sigmas=info["anchor_sigmas"])
    if family != "flux":
        kw["guidance_scale"] = 1.0
    if family != "sdxl":
        kw["max_sequence_length"] = T5_MAX_LENGTH
    if latents is not None:
        kw["latents"] = latents
    if sampler == "stochastic":
        from diffusers import FlowMatchEulerDiscreteScheduler

        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, stochastic_sampling=True)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=PROMPTS, height=RES, width=RES, generator=torch.Generator().manual_seed(0),
               output_type="latent", **kw).images
    return out, pipe.scheduler


def _ours(run, sampler):
    _, components, student, few = load_student(run)
    x0 = sample_latents(components, student, few, PROMPTS, 1, 0, sampler)
    return x0, components


def _sdxl_start(run):
    # the DDPM latent of senseflow's start: c(sigma_0) * few.start(noise) (x = noise, or noise / c(sigma_0)
    # with generator.pure_noise_start), as the export's senseflow.json records it
    from senseflow.models.sdxl import latent_scale

    _, components, _, few = load_student(run)
    noise = torch.randn((len(PROMPTS), *components.bundle.latent_shape), generator=torch.Generator().manual_seed(0))
    x = few.start(noise) if getattr(few, "pure_noise_start", False) else noise
    return x * latent_scale(components.bundle.sigma_table[few.anchor_indices[0]])


def _same_step_noise(monkeypatch, family, components):
    # The pipelines call scheduler.step without their generator, so diffusers draws each re-noising step's
    # noise from torch's global RNG (and for FLUX in the packed token layout). Feed it the numbers senseflow
    # draws: the same generator after the starting noise, in the latent layout.
    import diffusers.schedulers.scheduling_flow_match_euler_discrete as fm

    from senseflow.models.flux import pack_latents

    shape = (len(PROMPTS), *components.bundle.latent_shape)
    rng = torch.Generator().manual_seed(0)
    torch.randn(shape, generator=rng)

    def randn_tensor(_shape, generator=None, device=None, dtype=None, **_):
        x = torch.randn(shape, generator=rng)
        return (pack_latents(x) if family == "flux" else x).to(device=device, dtype=dtype)

    monkeypatch.setattr(fm, "randn_tensor", randn_tensor)


def _compare(family, ours, theirs, components):
    if family == "flux":
        from senseflow.models.flux import unpack_latents

        theirs = unpack_latents(theirs, *components.bundle.latent_shape[1:])
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(theirs, ours, atol=2e-4 * max(1.0, float(ours.abs().max())), rtol=0)


@pytest.mark.parametrize("family", ["sd3", "flux", "sdxl"])
def test_exported_pipeline_samples_equal_senseflow_sample(tmp_path, family, monkeypatch):
    from diffusers import DiffusionPipeline

    extra = ["generator.anchor_indices=[999,749,499,249]"] if family == "flux" else []
    cfg, run = _run_folder(tmp_path, family, extra)
    out = tmp_path / "student"
    info = _export(run, out)
    assert info["complete"] and info["default_schedule_exact"]
    assert (out / "model_index.json").is_file() and (out / "scheduler" / "scheduler_config.json").is_file()
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe).__name__ == {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline",
                                   "sdxl": "StableDiffusionXLPipeline"}[family]
    if family == "sdxl":  # the start the card tells users to pass is senseflow's start
        noise = torch.randn(_sdxl_start(run).shape, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(_sdxl_start(run), noise * info["start_latent_scale"], atol=1e-6, rtol=1e-6)
    samplers = ["euler"] if family == "sdxl" else ["euler", "stochastic"]
    for sampler in samplers:
        ours, components = _ours(run, sampler)
        if sampler == "stochastic":
            _same_step_noise(monkeypatch, family, components)
        start = _sdxl_start(run) if family == "sdxl" else None
        theirs, sched = _pipeline_latents(DiffusionPipeline.from_pretrained(out), family, info, sampler, start)
        # the pipeline stepped through exactly the trained anchors
        if family == "sdxl":
            assert sched.timesteps.tolist() == cfg.generator.anchor_indices
        else:
            torch.testing.assert_close(sched.sigmas[:-1], torch.tensor(info["anchor_sigmas"]), atol=1e-6, rtol=0)
        _compare(family, ours, theirs, components)
    # the images too: the pipeline's decoded output is `senseflow sample`'s rendering, to rounding
    ours, components = _ours(run, "euler")
    pipe = DiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=4)
    if family != "flux":
        kw["guidance_scale"] = 1.0
    if family != "sdxl":
        kw["max_sequence_length"] = T5_MAX_LENGTH
    else:
        kw["latents"] = _sdxl_start(run)
    images = pipe(prompt=PROMPTS, height=RES, width=RES, generator=torch.Generator().manual_seed(0),
                  output_type="np", **kw).images
    theirs_u8 = torch.from_numpy((images * 255).round().astype("uint8")).int()
    ours_u8 = torch.from_numpy(components.render(ours)).int()
    assert theirs_u8.shape == ours_u8.shape and (theirs_u8 - ours_u8).abs().max() <= 1
    # the teacher's weights would give other samples: the folder really holds the student
    teacher_pipe = tiny_pipeline(family, RES)
    teacher_pipe.scheduler = pipe.scheduler
    start = _sdxl_start(run) if family == "sdxl" else None
    t_lat, _ = _pipeline_latents(teacher_pipe, family, info, "euler", start)
    ours, _ = _ours(run, "euler")
    if family == "flux":
        from senseflow.models.flux import unpack_latents

        t_lat = unpack_latents(t_lat, *components.bundle.latent_shape[1:])
    assert (t_lat - ours).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["sd3", "flux", "sdxl"])
def test_student_only_folder_loads_with_the_teachers_components(tmp_path, family):
    from diffusers import DDIMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler

    _, run = _run_folder(tmp_path, family)  # FLUX: the preset's anchors [999, 903, 758, 511]
    out = tmp_path / "student"
    info = _export(run, out, "--student-only")
    assert not info["complete"] and not (out / "model_index.json").exists()
    assert info["default_schedule_exact"] == (family != "flux")
    teacher = tmp_path / "teacher"
    tiny_pipeline(family, RES).save_pretrained(teacher, safe_serialization=True)
    import diffusers

    sub = info["subfolder"]
    model_cls = getattr(diffusers, {"sd3": "SD3Transformer2DModel", "flux": "FluxTransformer2DModel",
                                    "sdxl": "UNet2DConditionModel"}[family])
    sched_cls = DDIMScheduler if family == "sdxl" else FlowMatchEulerDiscreteScheduler
    pipe = DiffusionPipeline.from_pretrained(teacher, **{sub: model_cls.from_pretrained(out, subfolder=sub)},
                                             scheduler=sched_cls.from_pretrained(out, subfolder="scheduler"))
    ours, components = _ours(run, "euler")
    theirs, sched = _pipeline_latents(pipe, family, info, "euler", _sdxl_start(run) if family == "sdxl" else None)
    if family != "sdxl":
        torch.testing.assert_close(sched.sigmas[:-1], torch.tensor(info["anchor_sigmas"]), atol=1e-6, rtol=0)
    _compare(family, ours, theirs, components)


def test_scheduler_lands_on_shifted_anchors_and_the_default_does_not():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from senseflow.export import pipeline_schedule, student_scheduler
    from senseflow.models.loading import sigma_table_for

    table = sigma_table_for("sd3", {"shift": 3.0})
    sched, exact = student_scheduler("sd3", [999, 749, 499, 249], table, 3.0)
    assert exact
    torch.testing.assert_close(torch.tensor(pipeline_schedule("sd3", sched, 4)), torch.tensor([1.0, 0.9, 0.75, 0.5]),
                               atol=1e-6, rtol=0)
    # the mistake guarded against: SD3.5's own scheduler at 4 steps, and the anchors passed as sigmas (shifted twice)
    sd35 = FlowMatchEulerDiscreteScheduler(shift=3.0)
    assert [round(s, 3) for s in pipeline_schedule("sd3", sd35, 4)] == [1.0, 0.858, 0.602, 0.009]
    sd35.set_timesteps(sigmas=[1.0, 0.9, 0.75, 0.5])
    assert abs(float(sd35.sigmas[1]) - 0.9) > 0.05
    # the digits world (linear table, SD3-style grid), 3 steps of SD3.5, FLUX's linear table
    for family, idx, shift in [("digits", [999, 749, 499, 249], 1.0), ("sd3", [999, 666, 333], 3.0),
                               ("flux", [999, 749, 499, 249], 1.0)]:
        table = sigma_table_for("flux" if family == "digits" else family, {"shift": shift})
        sched, exact = student_scheduler(family, idx, table, shift)
        got = pipeline_schedule("sd3" if family == "digits" else family, sched, len(idx))
        assert exact and max(abs(g - float(table[i])) for g, i in zip(got, idx)) < 1e-6
    # anchors that are not equally spaced: no exact default, the explicit sigmas pass through unshifted
    table = sigma_table_for("sd3", {"shift": 3.0})
    sched, exact = student_scheduler("sd3", [999, 800, 500, 200], table, 3.0)
    assert not exact
    sched.set_timesteps(sigmas=[float(table[i]) for i in (999, 800, 500, 200)])
    torch.testing.assert_close(sched.sigmas[:-1], table[[999, 800, 500, 200]], atol=1e-6, rtol=0)


def test_sdxl_anchors_without_a_ddim_spacing_are_refused():
    from senseflow.errors import UserError
    from senseflow.export import student_scheduler
    from senseflow.models.loading import sigma_table_for

    with pytest.raises(UserError, match=r"generator.anchor_indices=\[999, 800, 500, 200\]"):
        student_scheduler("sdxl", [999, 800, 500, 200], sigma_table_for("sdxl"), 1.0)


LICENCES = {"sd3": ("other", "stabilityai-ai-community"), "flux": ("other", "flux-1-dev-non-commercial-license"),
             "sdxl": ("openrail++", None)}
BASES = {"sd3": "stabilityai/stable-diffusion-3.5-large", "flux": "black-forest-labs/FLUX.1-dev",
         "sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}


@pytest.mark.parametrize("family", ["sd3", "flux", "sdxl"])
def test_model_card_front_matter_and_its_code_runs(tmp_path, monkeypatch, family):
    _, run = _run_folder(tmp_path, family)
    out = tmp_path / "student"
    info = _export(run, out)
    text = (out / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert (front["license"], front.get("license_name")) == LICENCES[family]
    assert front["base_model"] == BASES[family] and front["library_name"] == "diffusers"
    assert "text-to-image" in front["tags"] and front["pipeline_tag"] == "text-to-image"
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == (1 if family == "sdxl" else 2)
    if family == "flux":  # the preset's anchors: given as sigmas
        assert "sigmas=[1, 0.904, 0.759, 0.512]" in blocks[0] and not info["default_schedule_exact"]
    else:
        assert "num_inference_steps=4" in blocks[0] and info["default_schedule_exact"]
    if family != "sdxl":
        assert "stochastic_sampling=True" in blocks[1]
    monkeypatch.chdir(tmp_path)
    for code in blocks:  # on CPU in float32, as written otherwise
        exec(code.replace("torch.bfloat16", "torch.float32").replace('"cuda"', '"cpu"').replace("'cuda'", "'cpu'"), {})
    assert (tmp_path / "euler.png").is_file() and (family == "sdxl" or (tmp_path / "renoise.png").is_file())


def test_card_licences_of_flux_and_sdxl(tmp_path):
    from senseflow.export import card_metadata

    flux = card_metadata(config_mod.resolve("flux-dev-senseflow"))
    assert (flux["license"], flux["license_name"]) == ("other", "flux-1-dev-non-commercial-license")
    assert flux["base_model"] == "black-forest-labs/FLUX.1-dev"
    sdxl = card_metadata(config_mod.resolve("sdxl-senseflow"))
    assert sdxl["license"] == "openrail++" and "license_name" not in sdxl
    # a local teacher's own card decides
    (tmp_path / "README.md").write_text("---\nlicense: mit\nbase_model: someone/model\n---\n# x\n")
    own = card_metadata(config_mod.resolve("sdxl-senseflow", [f"model.teacher={tmp_path}"]))
    assert own["license"] == "mit" and own["base_model"] == "someone/model"


def test_local_teacher_without_training_data_exports_a_complete_pipeline(tmp_path):
    """A teacher loaded from a local folder (here a tiny SD3 saved by diffusers), and no `data.path` on this
    machine: export needs neither the data nor a hub, and writes a complete pipeline."""
    from diffusers import DiffusionPipeline

    teacher = tmp_path / "teacher"
    tiny_pipeline("sd3", RES).save_pretrained(teacher, safe_serialization=True)
    cfg = config_mod.resolve(PRESETS["sd3"], [f"model.teacher={teacher}", f"model.resolution={RES}",
                                              "model.dtype=float32", f"data.path={tmp_path / 'not-here'}"])
    run = tmp_path / "run"
    config_mod.save(cfg, run / "config.yaml")
    ck = run / "checkpoints" / "iter_0000010"
    ck.mkdir(parents=True)
    (ck / "trainer.json").write_text("{}")
    student = tiny_bundle("sd3", RES).teacher.student_copy()
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(1.01)
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(ck / "generator.safetensors"))
    out = tmp_path / "student"
    info = _export(run, out)
    assert info["complete"] and info["default_schedule_exact"]
    assert {p.name for p in out.iterdir()} >= {"model_index.json", "transformer", "scheduler", "vae", "text_encoder",
                                              "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2",
                                              "tokenizer_3", "README.md", "senseflow.json"}
    _, components, student, few = load_student(run)
    ours = sample_latents(components, student, few, PROMPTS, 1, 0, "euler")
    pipe = DiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt=PROMPTS, height=RES, width=RES, num_inference_steps=4, guidance_scale=1.0,
                  max_sequence_length=info["max_sequence_length"], generator=torch.Generator().manual_seed(0),
                  output_type="latent").images
    _compare("sd3", ours, theirs, components)
