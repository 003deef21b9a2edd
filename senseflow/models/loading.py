"""Build a `ModelBundle` for SD3/SD3.5, FLUX.1 or SDXL from a hub id or a local diffusers directory.

`load_bundle(family, source, resolution=...)` never downloads unless `allow_download=True`: a hub id is
resolved in the local Hugging Face cache (`snapshot_download(local_files_only=True)`), a local directory
is used as it is. Whatever is missing (the whole model, one component, a tokenizer that came back empty)
raises one `ModelNotAvailableError` that names the model, the component and how to get it.

Every tokenizer is loaded from a resolved local folder, never from a hub id: in transformers 5 a concrete
tokenizer class given an uncached hub id silently returns an almost empty tokenizer. Each
loaded tokenizer's vocabulary is also checked to be non-trivial.

`bundle_from_components` turns pipeline components (as named in the diffusers pipelines) into a bundle;
`pipeline_from_bundle` goes the other way, assembling the family's diffusers pipeline around a bundle's
objects (shared weights), for reference sampling and equivalence tests.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from senseflow import flow
from senseflow.models.base import ModelBundle
from senseflow.models.flux import FluxDenoiser
from senseflow.models.sd3 import SD3Denoiser
from senseflow.models.sdxl import (SDXL_BETA_END, SDXL_BETA_SCHEDULE, SDXL_BETA_START, SDXLDenoiser,
                                   ddpm_alphas_cumprod, sigma_from_alphas_cumprod)
from senseflow.models.text import FluxTextEncoder, SD3TextEncoder, SDXLTextEncoder
from senseflow.models.vae import VAECodec

FAMILIES = ("sd3", "flux", "sdxl")

# The teachers of the paper; used in messages and as defaults by callers.
DEFAULT_MODEL_IDS = {
    "sd3": "stabilityai/stable-diffusion-3.5-large",
    "flux": "black-forest-labs/FLUX.1-dev",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}

# Default T5 sequence lengths of the pipelines (SD3: 256; FLUX.1-dev: 512).
DEFAULT_MAX_SEQUENCE_LENGTH = {"sd3": 256, "flux": 512}

_MIN_VOCAB = 16  # ordinary (non-special, non-<extra_id_n>) tokens a real tokenizer must have


class ModelNotAvailableError(RuntimeError):
    """A model (or one of its components) is not on this machine; the message says how to get it."""


# ----------------------------------------------------------------------------- component tables
def _component_names(family: str, with_t5: bool) -> list[str]:
    if family == "sd3":
        names = ["transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]
        return names + (["text_encoder_3", "tokenizer_3"] if with_t5 else [])
    if family == "flux":
        return ["transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]
    if family == "sdxl":
        return ["unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def _model_class(family: str, name: str):
    import diffusers
    import transformers

    table = {
        ("sd3", "transformer"): diffusers.SD3Transformer2DModel,
        ("flux", "transformer"): diffusers.FluxTransformer2DModel,
        ("sdxl", "unet"): diffusers.UNet2DConditionModel,
        ("sd3", "text_encoder"): transformers.CLIPTextModelWithProjection,
        ("sd3", "text_encoder_2"): transformers.CLIPTextModelWithProjection,
        ("sd3", "text_encoder_3"): transformers.T5EncoderModel,
        ("flux", "text_encoder"): transformers.CLIPTextModel,
        ("flux", "text_encoder_2"): transformers.T5EncoderModel,
        ("sdxl", "text_encoder"): transformers.CLIPTextModel,
        ("sdxl", "text_encoder_2"): transformers.CLIPTextModelWithProjection,
    }
    if name == "vae":
        return diffusers.AutoencoderKL
    return table[(family, name)]


# ----------------------------------------------------------------------------- messages
_FAMILY_NAMES = {"sd3": "SD3/SD3.5", "flux": "FLUX.1", "sdxl": "SDXL"}


def _layout(names: list[str]) -> str:
    return ", ".join(n + "/" for n in names)


def _not_available(family: str, model: str, what: str, problem: str, *, local: bool,
                   with_t5: bool = True) -> ModelNotAvailableError:
    """The one error of this module: what is missing, from which model, and the two ways to fix it."""
    if local:
        fix = (f"To fix: on a machine with internet access run `hf download <model id> --local-dir <dir>` (e.g. "
               f"{DEFAULT_MODEL_IDS[family]}; older huggingface_hub: `huggingface-cli download`), copy <dir> to "
               f"{model!r} and load it again; or pass a hub id that is in this machine's Hugging Face cache.")
    else:
        fix = (f"To fix: on a machine with internet access run `hf download {model}` (older huggingface_hub: "
               f"`huggingface-cli download {model}`; gated models such as SD3.5 and FLUX.1-dev need an accepted "
               f"licence and `hf auth login` first), then copy that Hugging Face cache here and set HF_HOME to it; "
               f"or download it with `--local-dir <dir>` and pass <dir> as the source.")
    return ModelNotAvailableError(
        f"{_FAMILY_NAMES[family]} model {model!r}: {what} not available ({problem}). {fix} "
        f"Expected diffusers layout: {_layout(_component_names(family, with_t5))}.")


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - exotic huggingface_hub versions
        return "(unknown location)"


# ----------------------------------------------------------------------------- resolving the source
def local_or_cached(source: str | os.PathLike) -> Path:
    """A local directory as it is, else the hub id's snapshot in the local Hugging Face cache (never
    downloads); raises what huggingface_hub raises when it is not cached (or the id is invalid)."""
    path = Path(os.fspath(source)).expanduser()
    if path.exists():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=os.fspath(source), local_files_only=True))


def local_or_cached_or_raise(source: str | os.PathLike, what: str, hint: str) -> Path:
    """`local_or_cached`, or one `ModelNotAvailableError`: "<what> is not on this machine (<why>); <hint>"."""
    try:
        return local_or_cached(source)
    except Exception as err:  # not cached / offline / invalid id: the same to the caller
        raise ModelNotAvailableError(f"{what} is not on this machine ({type(err).__name__}); {hint}") from err


def _looks_like_path(source: str) -> bool:
    return (source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") != 1
            or bool(re.search(r"\s", source)))


def resolve_source(family: str, source: str | os.PathLike, *, with_t5: bool = True, revision: str | None = None,
                   allow_download: bool = False) -> Path:
    """The local directory (diffusers layout) holding `source`, with every component this family needs.

    `source` is a local directory or a hub id; a hub id is looked up in the local cache only, unless
    allow_download. Raises ModelNotAvailableError naming the model, the missing component(s) and the fix.
    """
    names = _component_names(family, with_t5)
    text = os.fspath(source)
    path = Path(text).expanduser()
    local = path.exists() or _looks_like_path(text)
    if local:
        if not path.is_dir():
            raise _not_available(family, text, "the model directory is", f"{str(path)!r} does not exist",
                                 local=True, with_t5=with_t5)
        root = path
    else:
        try:
            from huggingface_hub import snapshot_download

            wanted = [f"{n}/*" for n in names] + ["scheduler/*", "model_index.json"]  # not the single-file checkpoints
            root = Path(snapshot_download(repo_id=text, revision=revision, allow_patterns=wanted,
                                          local_files_only=not allow_download))
        except Exception as err:  # not cached, offline, invalid id, gated: all the same to the caller
            how = "downloads are off" if not allow_download else f"the download failed: {err}"
            raise _not_available(family, text, "the model is", f"not in the Hugging Face cache {_hub_cache()} and "
                                 f"{how}; {type(err).__name__}", local=False, with_t5=with_t5) from err
    missing = [n for n in names if not (root / n).is_dir()]
    if missing:
        what = (f"components {_layout(missing)} are" if len(missing) > 1 else f"component {missing[0]}/ is")
        raise _not_available(family, text, what, f"missing from {str(root)!r}", local=local, with_t5=with_t5)
    return root


# ----------------------------------------------------------------------------- loading
def _ordinary_vocab_size(tokenizer) -> int:
    special = set(getattr(tokenizer, "all_special_tokens", []))
    return sum(1 for t in tokenizer.get_vocab() if t not in special and not re.fullmatch(r"<extra_id_\d+>", t))


def _load_tokenizer(family: str, model: str, name: str, folder: Path, *, local: bool):
    """A tokenizer from a resolved local folder (never a hub id: see the module doc), checked to be non-empty."""
    from transformers import AutoTokenizer

    if not folder.is_dir():
        raise _not_available(family, model, f"component {name}/ is", f"no folder {str(folder)!r}", local=local)
    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:
        raise _not_available(family, model, f"component {name}/ is", f"cannot load a tokenizer from {str(folder)!r}: "
                             f"{type(err).__name__}: {err}", local=local) from err
    n = _ordinary_vocab_size(tok)
    if n < _MIN_VOCAB:
        raise _not_available(family, model, f"component {name}/ is", f"the tokenizer in {str(folder)!r} is empty "
                             f"({n} ordinary tokens; its vocabulary files are missing or unreadable)", local=local)
    return tok


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_components(family: str, root: Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    with_t5: bool = True, model: str | None = None) -> dict:
    """Load the pipeline components of a resolved directory (see `resolve_source`), frozen and in eval mode.

    Returns {component name: object} plus "scheduler_config" and "model_index" (dicts, maybe empty).
    """
    model = model or str(root)
    local = Path(model).expanduser().exists()
    comps: dict = {}
    for name in _component_names(family, with_t5):
        folder = root / name
        if name.startswith("tokenizer"):
            comps[name] = _load_tokenizer(family, model, name, folder, local=local)
            continue
        cls = _model_class(family, name)
        try:
            if cls.__module__.startswith("diffusers"):
                obj = cls.from_pretrained(str(folder), torch_dtype=dtype)
            else:
                obj = cls.from_pretrained(str(folder), dtype=dtype)
        except Exception as err:
            raise _not_available(family, model, f"component {name}/ is", f"cannot load {cls.__name__} from "
                                 f"{str(folder)!r}: {type(err).__name__}: {err}", local=local,
                                 with_t5=with_t5) from err
        comps[name] = obj.to(device).eval().requires_grad_(False)
    comps["scheduler_config"] = _read_json(root / "scheduler" / "scheduler_config.json")
    comps["model_index"] = _read_json(root / "model_index.json")
    return comps


def _latent_hw(resolution: int | tuple[int, int], factor: int) -> tuple[int, int]:
    h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if h % factor or w % factor:
        raise ValueError(f"resolution {h}x{w} is not a multiple of the VAE's downsampling factor {factor}")
    return h // factor, w // factor


def sigma_table_for(family: str, scheduler_config: dict | None = None) -> torch.Tensor:
    """The family's 1000-entry training table t -> sigma (index 0 least noisy), for ModelBundle.sigma_table.

    SD3/SD3.5: FlowMatchEuler's table shifted by the scheduler's `shift` (3.0); FLUX: unshifted (its shift
    depends on resolution and is applied by samplers, flow.flux_shift); SDXL: sigma of the DDPM
    alphas_cumprod (scaled-linear betas 0.00085..0.012), so table[[999, 749, 499, 249]] are the anchors.
    """
    cfg = scheduler_config or {}
    n_train = int(cfg.get("num_train_timesteps", 1000))
    if family == "sd3":
        return flow.sigma_table(n_train, float(cfg.get("shift", 3.0)))
    if family == "flux":
        return flow.sigma_table(n_train, 1.0)
    if family == "sdxl":
        alphas = ddpm_alphas_cumprod(n_train, float(cfg.get("beta_start", SDXL_BETA_START)),
                                     float(cfg.get("beta_end", SDXL_BETA_END)), cfg.get("beta_schedule", SDXL_BETA_SCHEDULE))
        return sigma_from_alphas_cumprod(alphas)
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


def bundle_from_components(family: str, comps: dict, *, resolution: int | tuple[int, int],
                           max_sequence_length: int | None = None) -> ModelBundle:
    """A ModelBundle around pipeline components (names as in the diffusers pipelines).

    Optional entries: "scheduler_config" (SD3 shift, SDXL betas), "model_index" (SDXL
    force_zeros_for_empty_prompt); text_encoder_3/tokenizer_3 absent or None means SD3 without T5.
    """
    codec = VAECodec(comps["vae"])
    lh, lw = _latent_hw(resolution, codec.downsample_factor)
    latent_shape = (codec.latent_channels, lh, lw)
    table = sigma_table_for(family, comps.get("scheduler_config"))
    if family in ("sd3", "flux"):
        seq = max_sequence_length or DEFAULT_MAX_SEQUENCE_LENGTH[family]
        backbone = comps["transformer"]
        if family == "sd3":
            p = backbone.config.patch_size
            if lh % p or lw % p:
                raise ValueError(f"latent size {lh}x{lw} is not a multiple of the patch size {p}")
            teacher = SD3Denoiser(backbone)
            text = SD3TextEncoder(comps["text_encoder"], comps["tokenizer"], comps["text_encoder_2"], comps["tokenizer_2"],
                                  comps.get("text_encoder_3"), comps.get("tokenizer_3"), max_sequence_length=seq,
                                  joint_attention_dim=backbone.config.joint_attention_dim)
        else:
            if lh % 2 or lw % 2:
                raise ValueError(f"FLUX needs even latent sizes, got {lh}x{lw}")
            teacher = FluxDenoiser(backbone)
            text = FluxTextEncoder(comps["text_encoder"], comps["tokenizer"], comps["text_encoder_2"], comps["tokenizer_2"],
                                   max_sequence_length=seq)
    elif family == "sdxl":
        teacher = SDXLDenoiser(comps["unet"], table)
        force_zeros = bool((comps.get("model_index") or {}).get("force_zeros_for_empty_prompt", True))
        text = SDXLTextEncoder(comps["text_encoder"], comps["tokenizer"], comps["text_encoder_2"], comps["tokenizer_2"],
                               resolution=resolution, force_zeros_for_empty_prompt=force_zeros)
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    teacher.requires_grad_(False)
    teacher.eval()
    return ModelBundle(family=family, teacher=teacher, text_encoder=text, codec=codec, latent_shape=latent_shape,
                       sigma_table=table)


def load_bundle(family: str, source: str | os.PathLike, *, resolution: int | tuple[int, int],
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", with_t5: bool = True,
                max_sequence_length: int | None = None, revision: str | None = None,
                allow_download: bool = False) -> ModelBundle:
    """Load a family's teacher, text encoder and VAE from a hub id (local cache) or a local directory.

    family: "sd3" (SD3 / SD3.5), "flux" (FLUX.1), "sdxl". with_t5=False drops SD3's T5 (its states become
    zeros, as in the pipeline); FLUX cannot run without T5. Raises ModelNotAvailableError when anything
    is missing.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if family == "flux" and not with_t5:
        raise ValueError("FLUX's text states come from T5; with_t5=False is only for SD3")
    with_t5 = with_t5 or family != "sd3"
    root = resolve_source(family, source, with_t5=with_t5, revision=revision, allow_download=allow_download)
    comps = load_components(family, root, dtype=dtype, device=device, with_t5=with_t5, model=os.fspath(source))
    return bundle_from_components(family, comps, resolution=resolution, max_sequence_length=max_sequence_length)


# ----------------------------------------------------------------------------- diffusers pipelines
def default_scheduler(family: str, config: dict | None = None):
    """The family's sampling scheduler: SD3.5's and FLUX.1-dev's FlowMatchEuler configs; for SDXL a DDIM
    scheduler (eta = 0) on SDXL's betas, whose step is an exact Euler step in our sigma coordinates.

    `config` (a scheduler_config.json dict) overrides the defaults where the class accepts the keys.
    """
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    config = {k: v for k, v in (config or {}).items() if not k.startswith("_")}
    if family == "sd3":
        base = dict(num_train_timesteps=1000, shift=3.0)
        cls = FlowMatchEulerDiscreteScheduler
    elif family == "flux":
        base = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                    base_image_seq_len=256, max_image_seq_len=4096)
        cls = FlowMatchEulerDiscreteScheduler
    elif family == "sdxl":
        base = dict(num_train_timesteps=1000, beta_start=SDXL_BETA_START, beta_end=SDXL_BETA_END,
                    beta_schedule=SDXL_BETA_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                    timestep_spacing="leading", prediction_type="epsilon")
        cls = DDIMScheduler
        config = {k: v for k, v in config.items() if k in base}  # an Euler config's extra keys do not apply
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return cls.from_config({**base, **config})


def pipeline_from_bundle(bundle: ModelBundle, scheduler=None):
    """The family's diffusers pipeline built from the bundle's own objects (weights shared, nothing copied)."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionXLPipeline

    scheduler = scheduler or default_scheduler(bundle.family)
    parts = dict(bundle.text_encoder.components(), vae=bundle.codec.vae, scheduler=scheduler)
    if bundle.family == "sd3":
        pipe = StableDiffusion3Pipeline(transformer=bundle.teacher.backbone, **parts)
    elif bundle.family == "flux":
        pipe = FluxPipeline(transformer=bundle.teacher.backbone, **parts)
    elif bundle.family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            unet=bundle.teacher.backbone, force_zeros_for_empty_prompt=bundle.text_encoder.force_zeros_for_empty_prompt,
            add_watermarker=False, **parts)
    else:
        raise ValueError(f"no diffusers pipeline for family {bundle.family!r}")
    pipe.set_progress_bar_config(disable=True)
    return pipe
