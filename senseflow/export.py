"""Export a distilled student as a diffusers model folder: weights, a scheduler that lands on the anchors, a model card.

Layout of `export_student(...)`'s folder:

    transformer/ (SD3/SD3.5, FLUX, digits) or unet/ (SDXL)   the student backbone (safetensors)
    scheduler/scheduler_config.json                        the student's K-step schedule
    model_index.json + vae/ text_encoder*/ tokenizer*/      complete layout only (the teacher's own components)
    README.md                                              model card: front matter, the exact sampling calls
    senseflow.json                                         anchors, sampler, schedule, provenance

The scheduler. The student is only ever queried at its K anchors sigma_k = table[i_k]. Diffusers' flow-match
scheduler builds a K-step schedule from an arithmetic grid u_k = 1 - k d (SD3 pipeline: from 1 to 1/1000;
FluxPipeline: from 1 to 1/K), maps it through the time shift S_a(u) = a u / (1 + (a - 1) u) and optionally
stretches it affinely so that it ends at `shift_terminal`: 1 - sigma -> c (1 - sigma). The anchors of a shifted
table with equally spaced indices are themselves S_s(1 - k delta) (s = the table's shift, delta = index spacing
/ 1000), and since both are Moebius maps of k the two agree for every k exactly when

    a = d s / (d s - delta (s - 1)),    c = delta a / (d s),    shift_terminal = sigma_{K-1} (when c != 1).

The shift a is fixed at every resolution by dynamic shifting with base_shift = max_shift = ln a. SD3.5's
anchors [1, .9, .75, .5] (the shift-3 images of [1, .75, .5, .25]) give a = 0.999 / 0.499 = 2.002 (2 if the
SD3 grid ended at 0 instead of 1/1000) and shift_terminal 0.5; every config is checked against the
scheduler itself before it is written. Anchors that are not equally spaced in the table (the FLUX preset's [999, 903, 758, 511])
are no such image: then the scheduler applies no shift and the pipeline is given the anchors as `sigmas=`,
which it uses as they are; `senseflow.json` and the card say which of the two holds. SDXL uses DDIM (eta 0),
whose step is an exact Euler step in sigma coordinates (tests/test_pipeline_equivalence.py), with the timestep
spacing whose K steps are the anchor timesteps and `set_alpha_to_one` so the last step ends at sigma 0.
The re-noising sampler is the flow-match scheduler's `stochastic_sampling` (x0 estimate, fresh noise to the
next anchor); DDIM has no such step, so SDXL students sample with Euler only in diffusers.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from senseflow.config import RunConfig
from senseflow.errors import UserError
from senseflow.models.base import Denoiser, ModelBundle

# The teachers' licences as Hugging Face writes them: a standard id, or "other" with a name and a link.
_LICENCES = {
    "sd3": {"license": "other", "license_name": "stabilityai-ai-community",
            "license_link": "https://huggingface.co/stabilityai/stable-diffusion-3.5-large/blob/main/LICENSE.md"},
    "flux": {"license": "other", "license_name": "flux-1-dev-non-commercial-license",
             "license_link": "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md"},
    "sdxl": {"license": "openrail++"},
}
_PIPELINES = {"sd3": ("StableDiffusion3Pipeline", "SD3Transformer2DModel"),
              "flux": ("FluxPipeline", "FluxTransformer2DModel"),
              "sdxl": ("StableDiffusionXLPipeline", "UNet2DConditionModel")}
_TOL = 1e-6  # float32 schedules: the anchors are table entries in float32


# ----------------------------------------------------------------------------- the schedule
def _flow_grid_spacing(family: str, k: int) -> float:
    """d of the arithmetic grid the family's pipeline feeds the scheduler (see the module doc)."""
    if family == "flux":
        return 1.0 / k  # FluxPipeline: sigmas = linspace(1, 1/K, K)
    return (1.0 - 1.0 / 1000) / (k - 1)  # SD3 pipeline: linspace(sigma_max, sigma_min) of the unshifted table


def pipeline_schedule(family: str, scheduler, k: int, image_seq_len: int = 1024) -> list[float]:
    """The K sigmas the family's diffusers pipeline steps through with `scheduler` and num_inference_steps=K.

    Calls `set_timesteps` the way StableDiffusion3Pipeline / FluxPipeline / StableDiffusionXLPipeline do.
    """
    import numpy as np

    if family == "sdxl":
        from senseflow.models.sdxl import sigma_from_alphas_cumprod

        scheduler.set_timesteps(k)
        ab = scheduler.alphas_cumprod[scheduler.timesteps.long()]
        return [float(s) for s in sigma_from_alphas_cumprod(ab)]
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = scheduler.config
    mu = calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                         cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    if family == "flux":
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / k, k), mu=mu)
    else:
        scheduler.set_timesteps(k, mu=mu if cfg.get("use_dynamic_shifting") else None)
    return [float(s) for s in scheduler.sigmas[:k]]


def _flow_config(family: str, anchor_indices: list[int], table_shift: float) -> dict[str, Any] | None:
    """The flow-match scheduler config whose default K-step schedule is the anchors, or None if there is none."""
    k = len(anchor_indices)
    base = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, stochastic_sampling=False)
    if anchor_indices[0] != 999:
        return None  # every flow-match schedule starts at sigma 1
    if k == 1:
        return base
    steps = {a - b for a, b in zip(anchor_indices, anchor_indices[1:])}
    if len(steps) != 1:
        return None
    s, delta, d = table_shift, steps.pop() / 1000, _flow_grid_spacing(family, k)
    if d * s - delta * (s - 1) <= 0:
        return None
    a = d * s / (d * s - delta * (s - 1))
    c = delta * a / (d * s)
    cfg = dict(base, use_dynamic_shifting=True, base_shift=math.log(a), max_shift=math.log(a),
               base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential")
    if abs(c - 1) > 1e-12:
        u = 1 - (k - 1) * delta
        cfg["shift_terminal"] = s * u / (1 + (s - 1) * u)  # the last anchor
    return cfg


def student_scheduler(family: str, anchor_indices: list[int], sigma_table: torch.Tensor, table_shift: float):
    """(scheduler, exact_default): the diffusers scheduler for the student and whether its default
    num_inference_steps=K schedule is the anchors (else the pipeline needs `sigmas=` the anchors).

    Raises UserError for SDXL anchors no DDIM timestep spacing produces.
    """
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    k = len(anchor_indices)
    anchors = [float(sigma_table[i]) for i in anchor_indices]
    if family == "sdxl":
        from senseflow.models.loading import default_scheduler

        for spacing in ("trailing", "leading", "linspace"):
            cfg = dict(default_scheduler("sdxl").config, timestep_spacing=spacing, set_alpha_to_one=True)
            sched = DDIMScheduler.from_config(cfg)
            sched.set_timesteps(k)
            if sched.timesteps.tolist() == list(anchor_indices):
                return sched, True
        raise UserError(f"generator.anchor_indices={anchor_indices} are not the {k} timesteps of any DDIM spacing "
                        "(trailing, leading, linspace), so diffusers' SDXL pipeline cannot sample this student "
                        "exactly; train it with anchors such as [999, 749, 499, 249] (trailing spacing)")
    fam = "flux" if family == "flux" else "sd3"  # digits: an SD3 transformer on a flow-match table
    cfg = _flow_config(fam, list(anchor_indices), 1.0 if family == "flux" else table_shift)
    if cfg is not None:
        sched = FlowMatchEulerDiscreteScheduler.from_config(cfg)
        got = pipeline_schedule(fam, sched, k)
        if max(abs(g - a) for g, a in zip(got, anchors)) <= _TOL:
            return sched, True
    identity = FlowMatchEulerDiscreteScheduler.from_config(
        dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, stochastic_sampling=False))
    identity.set_timesteps(sigmas=anchors)
    got = [float(s) for s in identity.sigmas[:k]]
    if max(abs(g - a) for g, a in zip(got, anchors)) > _TOL:  # would be a diffusers change: refuse, never guess
        raise RuntimeError(f"FlowMatchEulerDiscreteScheduler with shift 1 turned sigmas {anchors} into {got}")
    return identity, False


def _start_latent_scale(family: str, sigma0: float, pure_noise_start: bool) -> float:
    """SDXL: what the pipeline's starting latent (DDPM coordinates) must be times unit noise to be senseflow's
    start. senseflow starts at x = noise (sigma coordinates), whose DDPM latent is c(sigma_0) noise with
    c = 1 / sqrt((1 - s)^2 + s^2); with pure_noise_start it starts at noise / c(sigma_0), i.e. the DDPM latent
    is the noise itself, as the pipeline draws it. 1 for the flow families."""
    if family != "sdxl" or pure_noise_start:
        return 1.0
    return 1.0 / math.sqrt((1 - sigma0) ** 2 + sigma0 ** 2)


# ----------------------------------------------------------------------------- the model card
def _teacher_card(teacher: str) -> dict[str, Any]:
    """The teacher's own model card front matter (a local folder's README.md), or {}."""
    p = Path(teacher).expanduser() / "README.md" if teacher else None
    if p is None or not p.is_file():
        return {}
    try:
        from huggingface_hub import ModelCard

        return ModelCard.load(p).data.to_dict()
    except Exception:  # a README without front matter says nothing about the licence
        return {}


def _is_hub_id(teacher: str) -> bool:
    from senseflow.models.loading import _looks_like_path

    return bool(teacher) and not _looks_like_path(teacher) and not Path(teacher).expanduser().exists()


def card_metadata(cfg: RunConfig) -> dict[str, Any]:
    """Front matter: base model, library, tags, the teacher's licence (its card's, else the family's)."""
    from senseflow.models.loading import DEFAULT_MODEL_IDS

    family, teacher = cfg.model.family, cfg.model.teacher
    own = _teacher_card(teacher)
    meta: dict[str, Any] = {}
    if own.get("license"):
        meta.update({k: own[k] for k in ("license", "license_name", "license_link") if own.get(k)})
    elif family in _LICENCES:
        meta.update(_LICENCES[family])
    base = teacher if _is_hub_id(teacher) else own.get("base_model") or DEFAULT_MODEL_IDS.get(family)
    if base:
        meta["base_model"] = base
        meta["base_model_relation"] = "finetune"
    if family in _PIPELINES:
        meta["library_name"] = "diffusers"
        meta["pipeline_tag"] = "text-to-image"
    meta["tags"] = ["text-to-image", "distillation", "senseflow", "few-step", family]
    return meta


def _py_list(xs: list[float]) -> str:
    return "[" + ", ".join(f"{x:.7g}" for x in xs) + "]"


def _calls(family: str, here: str, teacher: str, complete: bool, steps: int, anchors: list[float], exact: bool,
           resolution: int, max_seq: int | None, with_t5: bool, latent_shape: list[int],
           start_scale: float = 1.0) -> tuple[str, str]:
    """(Euler call, re-noising call) as Python source."""
    pipe_cls, model_cls = _PIPELINES[family]
    sched_cls = "DDIMScheduler" if family == "sdxl" else "FlowMatchEulerDiscreteScheduler"
    imports = f"import torch\nfrom diffusers import {pipe_cls}" + ("" if complete else f", {model_cls}, {sched_cls}")
    sub = "unet" if family == "sdxl" else "transformer"
    if complete:
        load = f'pipe = {pipe_cls}.from_pretrained("{here}", torch_dtype=torch.bfloat16).to("cuda")'
    else:
        extra = ", text_encoder_3=None, tokenizer_3=None" if family == "sd3" and not with_t5 else ""
        load = (f'student = {model_cls}.from_pretrained("{here}", subfolder="{sub}", torch_dtype=torch.bfloat16)\n'
                f'scheduler = {sched_cls}.from_pretrained("{here}", subfolder="scheduler")\n'
                f'pipe = {pipe_cls}.from_pretrained("{teacher}", {sub}=student, scheduler=scheduler{extra},\n'
                f'    torch_dtype=torch.bfloat16).to("cuda")')
    args = [f"num_inference_steps={steps}" if exact else f"sigmas={_py_list(anchors)}"]
    if family != "flux":  # FLUX students have no guidance embedder, FluxPipeline's scale goes unused
        args.append("guidance_scale=1.0")
    args += [f"height={resolution}", f"width={resolution}"]
    if max_seq and family in ("sd3", "flux"):
        args.append(f"max_sequence_length={max_seq}")
    custom_start = family == "sdxl" and abs(start_scale - 1) > 1e-6
    if custom_start:
        args.append("latents=latents")
    gen = 'generator=torch.Generator("cuda").manual_seed(0)'
    call = f'image = pipe("a photo of a cat", {", ".join(args)},\n             {gen}).images[0]'
    pre = ""
    if custom_start:
        pre = ("# the student was trained from x = noise in sigma coordinates: its DDPM latent is noise * c(sigma_0)\n"
               f"latents = torch.randn(1, {', '.join(map(str, latent_shape))}, generator=torch.Generator().manual_seed(0))"
               f" * {start_scale:.9g}\n"
               "latents = latents.to('cuda', torch.bfloat16)\n")
    euler = f"{imports}\n\n{load}\n{pre}{call}\nimage.save('euler.png')\n"
    renoise = ""
    if family != "sdxl":
        more = "" if "FlowMatchEulerDiscreteScheduler" in imports else "\nfrom diffusers import FlowMatchEulerDiscreteScheduler"
        renoise = (f"{imports}{more}\n\n{load}\n"
                   "# the re-noising sampler: x0 estimate at each anchor, fresh noise to the next one\n"
                   "pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, "
                   "stochastic_sampling=True)\n"
                   "torch.manual_seed(0)  # the pipeline draws the re-noising steps' noise from the global RNG\n"
                   f"{call}\nimage.save('renoise.png')\n")
    return euler, renoise


def model_card(cfg: RunConfig, info: dict[str, Any], *, here: str = "path/to/this/folder") -> str:
    """README.md text (front matter + body) for an exported student."""
    import yaml

    family = cfg.model.family
    meta = card_metadata(cfg)
    anchors, k, exact = info["anchor_sigmas"], len(info["anchor_sigmas"]), info["default_schedule_exact"]
    lines = [f"# {cfg.name} student of {meta.get('base_model', 'its teacher')} ({k} steps)", "",
             f"A {k}-step generator distilled with SenseFlow (method `{cfg.method}`: DMD2"
             + (" + IDA" if cfg.ida.enabled else "") + (" + ISG" if cfg.isg.enabled else "")
             + (f" + {cfg.gan.kind} discriminator" if cfg.gan.kind != "none" else "") + ") "
             f"from `{cfg.model.teacher or family}` with the `senseflow` harness. It was trained to be queried only at "
             f"the sigmas {_py_list(anchors)} (table indices {info['anchor_indices']}); guidance "
             "is distilled into it, so it samples without guidance.", ""]
    if family not in _PIPELINES:
        lines += ["This is a digits-world student (an SD3-architecture transformer with the harness's own text "
                  "encoder): sample it with `senseflow sample <run folder> -p \"a handwritten seven\"`.", ""]
    else:
        euler, renoise = _calls(family, here, cfg.model.teacher or "path/to/teacher", info["complete"], k, anchors,
                                exact, cfg.model.resolution, info.get("max_sequence_length"), cfg.model.with_t5,
                                info["latent_shape"], info["start_latent_scale"])
        how = ("`num_inference_steps=" + str(k) + "` with the scheduler in `scheduler/` steps exactly through "
               "these sigmas" if exact else
               "these anchors are not equally spaced in the teacher's sigma table, so no flow-match scheduler setting "
               "reproduces them from `num_inference_steps`; the scheduler in `scheduler/` applies no shift and the "
               "call passes them as `sigmas=`, which the pipeline then uses as they are (do not pass them to a "
               "shifted scheduler: it would shift them a second time)")
        lines += ["## Sampling with diffusers", "",
                  ("This folder is a complete pipeline." if info["complete"] else
                   f"This folder holds the student `{info['subfolder']}/` and its `scheduler/`; the other components "
                   f"(VAE, text encoders, tokenizers) are the teacher's."), f"Euler sampling: {how}.", "",
                  "```python", euler.rstrip(), "```", ""]
        if renoise:
            lines += ["Re-noising sampler (the one trained by backward simulation; diffusers' `stochastic_sampling`):", "",
                      "```python", renoise.rstrip(), "```", ""]
        else:
            lines += ["SDXL's DDIM scheduler has no re-noising step; in diffusers the student samples with Euler "
                      "(DDIM, eta 0). `senseflow sample --sampler stochastic` has the re-noising sampler.", ""]
        if renoise:
            lines += ["With the re-noising sampler the pipeline draws each step's fresh noise from torch's global "
                      "random state (it does not hand `generator` to the scheduler): seed it with `torch.manual_seed` "
                      "for repeatable samples. `senseflow sample` draws it from its own generator"
                      + (" in the latent layout, diffusers in FLUX's packed token layout" if family == "flux" else "")
                      + ": same distribution, other numbers for the same seed.", ""]
        lines += ["Given the same prompts and noise, these calls give the samples of `senseflow sample` "
                  "(tested on tiny SD3, FLUX and SDXL models in the harness's `tests/test_export.py`).", ""]
    lines += ["## Training", "", "```yaml", yaml.safe_dump({"method": cfg.method, "name": cfg.name,
              "anchor_indices": info["anchor_indices"], "iterations": cfg.train.iterations,
              "batch_size": cfg.train.batch_size, "seed": cfg.train.seed}, sort_keys=False).rstrip(), "```", "",
              "The full resolved configuration is in `senseflow.json` (`config`).", ""]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n" + "\n".join(lines)


# ----------------------------------------------------------------------------- the folder
def export_student(student: Denoiser, out_dir: str | os.PathLike, cfg: RunConfig, bundle: ModelBundle, *,
                   complete: bool | None = None, pure_noise_start: bool = False) -> Path:
    """Write the student folder (see the module doc); returns it.

    complete: also write the teacher's other components and model_index.json so that
    `Pipeline.from_pretrained(out)` works (default: when the teacher is a local folder or a tiny model, not a
    hub id, whose components users load from the hub with `Pipeline.from_pretrained(teacher, transformer=...)`).
    """
    from senseflow.models.loading import pipeline_from_bundle

    family = cfg.model.family
    out = Path(out_dir)
    sub = "unet" if family == "sdxl" else "transformer"
    scheduler, exact = student_scheduler(family, cfg.generator.anchor_indices, bundle.sigma_table,
                                         cfg.model.table_shift)
    if complete is None:
        complete = family in _PIPELINES and not _is_hub_id(cfg.model.teacher) or cfg.model.tiny
    complete = complete and family in _PIPELINES
    out.mkdir(parents=True, exist_ok=True)
    if complete:
        pipe = pipeline_from_bundle(bundle, scheduler)
        setattr(pipe, sub, student.backbone)  # registered module: model_index.json follows
        pipe.save_pretrained(out, safe_serialization=True)
    else:
        student.backbone.save_pretrained(out / sub, safe_serialization=True)
        scheduler.save_pretrained(out / "scheduler")
    text = bundle.text_encoder
    info = {"family": family, "teacher": cfg.model.teacher, "method": cfg.method, "name": cfg.name,
            "anchor_indices": list(cfg.generator.anchor_indices),
            "anchor_sigmas": [float(bundle.sigma_table[i]) for i in cfg.generator.anchor_indices],
            "table_shift": cfg.model.table_shift, "sampler": cfg.generator.sampler, "subfolder": sub,
            "complete": complete, "default_schedule_exact": exact,
            "max_sequence_length": getattr(text, "max_sequence_length", None), "resolution": cfg.model.resolution,
            "latent_shape": list(bundle.latent_shape), "start_latent_scale": _start_latent_scale(
                family, float(bundle.sigma_table[cfg.generator.anchor_indices[0]]), pure_noise_start),
            "config": cfg.to_dict()}
    (out / "senseflow.json").write_text(json.dumps(info, indent=1, default=str))
    (out / "README.md").write_text(model_card(cfg, info, here=str(out)))
    return out
