"""Typed, validated run configuration: presets + YAML + dotted overrides.

One `RunConfig` describes one run completely; its resolved form is saved as `config.yaml` next to the
run and is enough (with the code version) to reproduce it. Every error names the key, the bad value
and what is allowed (`ConfigError`, one line, no traceback at the command line).

Times are expressed in the family's 1000-entry sigma table (`ModelBundle.sigma_table`, index 999 is
sigma = 1): generator anchors, DMD index ranges and ISG margins are table indices, exactly as the
authors' settings are written. For SD3.5 the table is the shift-3 table, so anchors [999, 749, 499, 249]
are sigma [1.0, 0.9, 0.75, 0.5]; for FLUX the table is linear (sigma = (i + 1) / 1000).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, computed_field, field_validator,
                      model_validator)

from senseflow.metric_names import WEIGHT_KEYS, metric_names


class ConfigError(ValueError):
    """A bad configuration: the message names the key, the value and what is allowed."""


class _Strict(BaseModel):
    # inf / nan are never a meaningful setting (a learning rate of inf trains to nan silently)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class GuidanceConfig(_Strict):
    """Teacher guidance scale, drawn w ~ U(low, high) per sample each call (low == high: fixed)."""

    low: float = Field(1.0, ge=0.0)
    high: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _order(self):
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self


class TimestepConfig(_Strict):
    """How a sigma is drawn: an index into the sigma table, logit-normal, or uniform (then shifted)."""

    kind: Literal["table_index", "logit_normal", "uniform"] = "logit_normal"
    low: int = Field(20, ge=0, le=999, description="table_index: lowest index")
    high: int = Field(980, ge=0, le=999, description="table_index: highest index")
    mean: float = 0.0
    std: float = Field(1.0, gt=0.0)
    shift: float = Field(1.0, gt=0.0, description="shift applied to logit_normal / uniform draws")

    @model_validator(mode="after")
    def _order(self):
        if self.kind == "table_index" and self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self


class ModelConfig(_Strict):
    family: Literal["digits", "sd3", "flux", "sdxl"] = "digits"
    teacher: str = Field("", description="hub id or local diffusers directory ('' for worlds that build their own)")
    tiny: bool = Field(False, description="random-init tiny version of the architecture (tests, smoke runs)")
    resolution: int = Field(1024, ge=8)
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    with_t5: bool = True
    table_shift: float = Field(1.0, gt=0.0, description="shift of the sigma table (SD3.5: 3; FLUX: 1)")


class GeneratorConfig(_Strict):
    anchor_indices: list[int] = Field(default_factory=lambda: [999, 749, 499, 249])
    backsim_prob: float = Field(0.5, ge=0.0, le=1.0)
    sampler: Literal["stochastic", "euler"] = "stochastic"
    pure_noise_start: bool = Field(False, description=(
        "the first anchor's input is unit-variance noise in the backbone's own input space (SDXL as in DMD2: the "
        "UNet gets pure noise, x_s = noise / c(sigma_0)); identical to interpolation where sigma_0 = 1"))

    @field_validator("anchor_indices")
    @classmethod
    def _anchors(cls, v: list[int]):
        if not v:
            raise ValueError("needs at least one anchor")
        if any(not 0 <= i <= 999 for i in v):
            raise ValueError(f"every anchor index must lie in [0, 999], got {v}")
        if any(a <= b for a, b in zip(v, v[1:])):
            raise ValueError(f"anchor indices must be strictly decreasing (noisiest first), got {v}")
        return v


class DMDConfig(_Strict):
    timestep: TimestepConfig = Field(default_factory=lambda: TimestepConfig(kind="table_index"))
    guidance: GuidanceConfig = Field(default_factory=lambda: GuidanceConfig(low=3.0, high=10.0))


class FakeScoreConfig(_Strict):
    timestep: TimestepConfig = Field(default_factory=TimestepConfig)
    loss: Literal["flow", "epsilon"] = Field("flow", description="epsilon: SDXL's epsilon-MSE variant")


class IDAConfig(_Strict):
    enabled: bool = True
    lam: float = Field(0.97, ge=0.0, le=1.0, description="phi <- lam * phi + (1 - lam) * theta")


class ISGConfig(_Strict):
    enabled: bool = True
    form: Literal["paper", "teacher_x0"] = Field("paper", description=(
        "paper: the definition (teacher step to a midpoint, then G's step, vs G's direct step); teacher_x0: the "
        "authors' released SDXL form, a distance between G's x0 and the guided teacher's one-step x0, both "
        "re-noised alike to the segment end (independent of the midpoint)"))
    weight: float = Field(1.0, ge=0.0)
    margin: int = Field(50, ge=0, description="table indices kept clear of both segment ends")
    distance: Literal["pseudo_huber", "l2"] = "pseudo_huber"
    huber_c: float = Field(1e-3, gt=0.0)
    guidance: GuidanceConfig = Field(default_factory=lambda: GuidanceConfig(low=5.0, high=5.0))


class GANConfig(_Strict):
    kind: Literal["none", "vfm", "dmd2"] = "vfm"
    weight: float = Field(0.1, ge=0.0, description="lambda_gan on the generator's adversarial term")
    disc_weight: float = Field(1.0, ge=0.0, description="weight of the discriminator's own loss")
    omega: Literal["paper", "sd35", "sdxl", "one"] = "paper"
    backbone: str = Field("facebook/dinov2-large", description="DINOv2 hub id or local dir (vfm)")
    layers: list[int] | None = Field(None, description="blocks whose outputs feed heads (None: the backbone's preset)")
    head_channels: int = Field(64, ge=1)
    hidden_channels: int | None = Field(None, ge=1, description="width inside the heads (None: the feature width)")
    virtual_batch: int = Field(8, ge=1)
    diffaug: list[Literal["color", "translation", "cutout"]] = Field(
        default_factory=lambda: ["color", "translation", "cutout"])
    reference: bool = Field(True, description="condition on the real reference image's features")
    text_condition: Literal["clip", "pooled_per_head", "pooled_shared"] = Field("clip", description=(
        "clip: a separate CLIP text embedding (gan.text_encoder) through one equalized-lr linear per head (the "
        "authors'); pooled_per_head: the teacher's pooled prompt embedding through the same per-head layers; "
        "pooled_shared: the teacher's pooled embedding through one shared nn.Linear"))
    text_encoder: str = Field("openai/clip-vit-large-patch14", description=(
        "text_condition=clip: CLIP hub id (local cache only) or local directory with a CLIPTextModelWithProjection "
        "and its tokenizer"))
    d_receives_g_gradient: bool = Field(False, description=(
        "the authors' released trainers: D is not frozen in the generator's adversarial pass and its gradients are "
        "not cleared before its own step, so D's update also carries the generator loss's gradient (vfm only)"))
    train_fake_score_body: bool = Field(False, description=(
        "dmd2 head: the classifier loss (x disc_weight) joins the fake score's loss in one backward and one "
        "clipped update of F's body and the head, as DMD2 trains its guidance model"))


class OptimConfig(_Strict):
    lr_generator: float = Field(1e-6, gt=0.0)
    lr_fake: float = Field(1e-6, gt=0.0)
    lr_disc: float = Field(1e-6, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW's decoupled weight decay (the authors' configs: 0)")
    eps: float = Field(1e-8, gt=0.0)
    eight_bit: bool | Literal["auto"] = Field(False, description=(
        "true: bitsandbytes AdamW8bit (an error before any weight loads if bitsandbytes is missing); false: "
        "torch AdamW; auto: 8-bit when bitsandbytes imports. status.json records the optimizer used"))
    grad_clip: float = Field(1.0, gt=0.0)
    ttur: int = Field(5, ge=1, description="generator updated when iteration % ttur == 0")
    warmup: int = Field(0, ge=0, description=(
        "iterations of linear warm-up from lr 0 (DMD2: 500); 0: constant lr, as the authors' configs"))

    @field_validator("betas")
    @classmethod
    def _betas(cls, v):
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"each beta must lie in [0, 1), got {list(v)}")
        return v


class TrainConfig(_Strict):
    iterations: int = Field(1000, ge=1)
    batch_size: int = Field(1, ge=1, description="per process")
    seed: int = 0
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    sample_every: int = Field(0, ge=0, description="0: only at the end")
    eval_every: int = Field(0, ge=0, description="0: only at the end")
    mixed_precision: Literal["no", "bf16", "fp16"] = "bf16"
    trainable_dtype: Literal["float32", "bfloat16"] = Field("float32", description=(
        "stored precision of the generator's and fake score's weights in every layout (bfloat16: the authors' "
        "FLUX choice); the discriminator's heads are always float32, the teacher and frozen backbones are in "
        "model.dtype (senseflow.precision)"))
    gradient_checkpointing: bool = True
    divergence_grad_norm: float = Field(1e4, gt=0.0, description="pre-clip norm above this counts as diverged")
    divergence_patience: int = Field(3, ge=1, description="consecutive bad iterations before stopping")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: leave as is)")
    trackers: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, description="also log metrics through accelerate's trackers (package must be installed)")
    parallel: Literal["fsdp", "ddp"] = Field("fsdp", description=(
        "with several processes: fsdp shards G, F and D (FSDP2), ddp replicates them and averages gradients; "
        "ignored in one process (senseflow.parallel)"))
    shard_group: int = Field(0, ge=0, description="fsdp: ranks per shard group (0: all; a divisor gives HSDP)")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _no_is_false(cls, v):
        return "no" if v is False else v  # `mixed_precision: no` in a YAML file parses as False


class DataConfig(_Strict):
    path: str = Field("", description=(
        "real teachers' (image, caption) pairs: a folder of images with same-named .txt captions, or a .jsonl "
        "file (the digits world builds its own data)"))
    latents: Literal["posterior_sample", "posterior_mean"] = Field("posterior_sample", description=(
        "real latents from the VAE: a draw from its posterior (the authors and DMD2) or the posterior mean"))


class EvalConfig(_Strict):
    metrics: list[str] = Field(default_factory=lambda: ["fid_t", "prompt_accuracy"])
    num_samples: int = Field(2000, ge=1)
    batch_size: int = Field(250, ge=1)
    prompts: str = Field("", description="prompt file ('' : the world's held-out prompts)")
    samplers: list[Literal["stochastic", "euler"]] = Field(default_factory=lambda: ["stochastic"])
    seed: int = 1234
    weights: dict[str, str] = Field(default_factory=dict, description=(
        "local weight files of the metric models: inception, clip_score, hps, pickscore, pickscore_processor, "
        "image_reward (or SENSEFLOW_*_WEIGHTS / SENSEFLOW_WEIGHTS_DIR)"))
    patch_size: int = Field(299, ge=8, description="crop size of patch FID-T (full-resolution crops)")
    teacher_steps: int = Field(28, ge=1, description=(
        "Euler steps of the teacher's reference samples (FID-T and the other reference metrics; SD3.5's default "
        "step count; real and tiny families, the digits world has its own reference set)"))
    teacher_guidance: float = Field(4.5, ge=0.0, description=(
        "the teacher's single guidance scale for its reference samples (FLUX: its embedded guidance)"))

    @field_validator("weights")
    @classmethod
    def _weight_keys(cls, v: dict[str, str]):
        for key in v:
            if key not in WEIGHT_KEYS:
                close = difflib.get_close_matches(key, WEIGHT_KEYS, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(WEIGHT_KEYS)}"
                raise ValueError(f"unknown key '{key}'; {hint}")
        return v


class OutputConfig(_Strict):
    root: str = "results/runs"
    grid: str = "adhoc"


class RunConfig(_Strict):
    name: str = Field("run", description="variant label shown in tables, e.g. 'SenseFlow' or 'w/o ISG'")
    preset: str = ""
    model: ModelConfig = Field(default_factory=ModelConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    dmd: DMDConfig = Field(default_factory=DMDConfig)
    fake_score: FakeScoreConfig = Field(default_factory=FakeScoreConfig)
    ida: IDAConfig = Field(default_factory=IDAConfig)
    isg: ISGConfig = Field(default_factory=ISGConfig)
    gan: GANConfig = Field(default_factory=GANConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    # what tiny mode changed when this config was built (senseflow.tiny_mode); not part of the config
    _tiny_changes: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _tiny_mode(cls, data: Any, handler):
        changes: list[str] = []
        if isinstance(data, dict):
            from senseflow import tiny_mode

            data, changes = tiny_mode.adapt(data)
        cfg = handler(data)
        if changes:
            cfg._tiny_changes = changes
        return cfg

    @property
    def tiny_changes(self) -> list[str]:
        return list(self._tiny_changes)

    @computed_field(description="derived from gan.kind, ida.enabled and isg.enabled (see RunConfig.method)")
    @property
    def method(self) -> Literal["dmd2", "senseflow", "custom"]:
        """dmd2: DMD2's classifier head on the fake score without IDA or ISG; senseflow: the VFM discriminator
        with ISG, and IDA where the family's SenseFlow recipe has it (every family but SDXL, whose authors'
        trainer has none); custom: any other combination (an ablation cell). A config may still name `method`
        (saved configs do): it is accepted when it agrees, and an error otherwise."""
        gan, ida, isg = self.gan.kind, self.ida.enabled, self.isg.enabled
        if gan == "dmd2" and not ida and not isg:
            return "dmd2"
        if gan == "vfm" and isg and ida == (self.model.family not in _SENSEFLOW_WITHOUT_IDA):
            return "senseflow"
        return "custom"

    @model_validator(mode="wrap")
    @classmethod
    def _stated_method(cls, data: Any, handler):
        stated = None
        if isinstance(data, dict) and "method" in data:
            data = dict(data)
            stated = data.pop("method")
        cfg = handler(data)
        if stated is not None and stated != cfg.method:
            raise ValueError(f"method={stated!r} disagrees with the settings, which make this run {cfg.method!r} "
                             f"(gan.kind={cfg.gan.kind}, ida.enabled={str(cfg.ida.enabled).lower()}, "
                             f"isg.enabled={str(cfg.isg.enabled).lower()}, model.family={cfg.model.family}); "
                             "method is derived from them: remove the key")
        return cfg

    @model_validator(mode="after")
    def _metrics_and_layers(self):
        known = metric_names(self.model.family)
        for m in self.eval.metrics:
            if m not in known:
                close = difflib.get_close_matches(m, known, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"{self.model.family} runs know {', '.join(known)}"
                raise ValueError(f"eval.metrics={self.eval.metrics}: unknown metric '{m}'; {hint}")
        if self.gan.kind == "vfm" and self.gan.layers is not None:
            from senseflow.backbones import backbone_depth

            depth = backbone_depth(self.gan.backbone)
            if not self.gan.layers:
                raise ValueError("gan.layers=[]: give at least one block index, or null for the backbone's default")
            if depth is not None:
                norm = [i + depth if i < 0 else i for i in self.gan.layers]
                if any(not 0 <= i < depth for i in norm) or len(set(norm)) != len(norm):
                    raise ValueError(f"gan.layers={self.gan.layers}: gan.backbone={self.gan.backbone!r} has {depth} "
                                     f"blocks; give distinct indices in [{-depth}, {depth}) or null for its default")
        return self

    @model_validator(mode="after")
    def _consistent(self):
        if self.isg.enabled and self.isg.margin * 2 >= min(
                a - b for a, b in zip(self.generator.anchor_indices, self.generator.anchor_indices[1:] + [-1])):
            raise ValueError(f"isg.margin={self.isg.margin} leaves no room inside the shortest anchor segment "
                             f"of generator.anchor_indices={self.generator.anchor_indices}; lower isg.margin")
        if self.gan.d_receives_g_gradient and self.gan.kind != "vfm":
            raise ValueError(f"gan.d_receives_g_gradient=true reproduces the authors' VFM discriminator; it needs "
                             f"gan.kind=vfm, got gan.kind={self.gan.kind}")
        if self.gan.train_fake_score_body and self.gan.kind != "dmd2":
            raise ValueError(f"gan.train_fake_score_body=true is DMD2's classifier on the fake score; it needs "
                             f"gan.kind=dmd2, got gan.kind={self.gan.kind}")
        return self

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        return {"name": d.pop("name"), "method": d.pop("method"), **d}  # the derived method right after the name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def identity_hash(self) -> str:
        """Hash of everything that changes the trained student: the output location and the evaluation
        settings do not (re-evaluating a run with other metrics reuses its training), nor does the method,
        which is derived from the settings."""
        d = self.to_dict()
        d.pop("output", None)
        d.pop("eval", None)
        d.pop("method", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------- presets
# Families whose SenseFlow recipe has no IDA (the authors' SDXL trainer has none); RunConfig.method reads it.
_SENSEFLOW_WITHOUT_IDA = ("sdxl",)

# What the four paper teachers share: precision and optimizer as in all of the authors' trainers (fp32 weights
# under bf16 autocast, AdamW without weight decay, constant lr, clip 1.0), the VFM discriminator on DINOv2-L,
# the paper's evaluation. Keys are dotted paths, as in overrides.
_PAPER = {
    "train.batch_size": 1, "train.checkpoint_every": 500, "train.mixed_precision": "bf16",
    "train.gradient_checkpointing": True, "train.trainable_dtype": "float32",
    "optim.betas": [0.9, 0.999], "optim.eps": 1e-8, "optim.weight_decay": 0.0, "optim.grad_clip": 1.0, "optim.warmup": 0,
    "gan.kind": "vfm", "gan.backbone": "facebook/dinov2-large", "gan.layers": [2, 5, 8, 10, 14, 19, 23],
    "eval.metrics": ["fid_t", "patch_fid_t", "clip_score", "hps", "pickscore", "image_reward"],
    "eval.num_samples": 5000, "eval.batch_size": 8, "eval.samplers": ["stochastic", "euler"],
}
_SD35 = {
    **_PAPER, "model.family": "sd3", "model.resolution": 1024, "model.table_shift": 3.0,
    "generator.anchor_indices": [999, 749, 499, 249],
    "dmd.timestep": {"kind": "table_index", "low": 20, "high": 980},
    "fake_score.timestep": {"kind": "logit_normal", "mean": 0.0, "std": 1.0, "shift": 3.0},
    "isg.margin": 50, "gan.weight": 0.1, "gan.omega": "sd35",
    "optim.lr_generator": 1e-6, "optim.lr_fake": 1e-6, "optim.lr_disc": 1e-6, "train.iterations": 27000,
}

# Each teacher's SenseFlow settings, one entry per teacher (the authors' values). The authors' SD3.5-Large and
# FLUX trainers use 8-bit AdamW, the others torch AdamW; their FLUX trainer stores G and F in bf16.
_TEACHERS: dict[str, dict[str, Any]] = {
    "sd35-large": {
        **_SD35, "model.teacher": "stabilityai/stable-diffusion-3.5-large", "dmd.guidance": {"low": 3.0, "high": 10.0},
        "ida.lam": 0.97, "isg.weight": 1.0, "isg.guidance": {"low": 5.0, "high": 5.0},
        "optim.eight_bit": True, "optim.ttur": 5},
    "sd35-medium": {
        **_SD35, "model.teacher": "stabilityai/stable-diffusion-3.5-medium", "dmd.guidance": {"low": 2.0, "high": 8.0},
        "ida.lam": 0.98, "isg.weight": 0.5, "isg.guidance": {"low": 2.0, "high": 4.0},
        "optim.eight_bit": False, "optim.ttur": 10},
    "flux-dev": {
        **_PAPER, "model.family": "flux", "model.teacher": "black-forest-labs/FLUX.1-dev", "model.resolution": 1024,
        "model.table_shift": 1.0,
        "generator.anchor_indices": [999, 903, 758, 511],  # sigma 1.0, .904, .759, .512
        "dmd.timestep": {"kind": "logit_normal", "mean": 0.0, "std": 1.0, "shift": 1.0},
        "dmd.guidance": {"low": 1.0, "high": 8.0},
        "fake_score.timestep": {"kind": "logit_normal", "mean": 0.0, "std": 1.0, "shift": 1.0},
        "ida.lam": 0.97, "isg.weight": 1.0, "isg.margin": 20, "isg.guidance": {"low": 1.0, "high": 8.0},
        "gan.weight": 2.0, "gan.omega": "paper",
        "optim.lr_generator": 1e-5, "optim.lr_fake": 1e-5, "optim.lr_disc": 1e-5, "optim.eight_bit": True,
        "optim.ttur": 5, "train.iterations": 12000, "train.trainable_dtype": "bfloat16"},
    "sdxl": {
        **_PAPER, "model.family": "sdxl", "model.teacher": "stabilityai/stable-diffusion-xl-base-1.0",
        "model.resolution": 1024,
        # DDPM t; the UNet's input at t = 999 is unit-variance noise (DMD2's and the authors' pure_noise_mask)
        "generator.anchor_indices": [999, 749, 499, 249], "generator.pure_noise_start": True,
        "dmd.timestep": {"kind": "table_index", "low": 20, "high": 980}, "dmd.guidance": {"low": 8.0, "high": 8.0},
        "fake_score.timestep": {"kind": "table_index", "low": 0, "high": 999}, "fake_score.loss": "epsilon",
        "ida.enabled": False, "ida.lam": 0.97,
        # the authors' SDXL numbers come from their released SDXL ISG, which is the teacher_x0 form
        "isg.form": "teacher_x0", "isg.weight": 0.2, "isg.margin": 20, "isg.guidance": {"low": 3.0, "high": 15.0},
        "gan.weight": 0.5, "gan.omega": "sdxl",
        "optim.lr_generator": 1e-6, "optim.lr_fake": 1e-6, "optim.lr_disc": 1e-6, "optim.eight_bit": False,
        "optim.ttur": 5, "train.iterations": 18000},
    # the embedded CPU world (senseflow.worlds.digits); budgets sized for minutes on 2 cores
    "digits": {
        "model.family": "digits", "model.teacher": "", "model.resolution": 8, "model.dtype": "float32",
        "model.table_shift": 1.0,
        "generator.anchor_indices": [999, 749, 499, 249], "generator.sampler": "euler",
        # the world's reference (FID-T) samples use CFG 2, so the student is taught that distribution
        "dmd.timestep": {"kind": "table_index", "low": 20, "high": 980}, "dmd.guidance": {"low": 2.0, "high": 2.0},
        "fake_score.timestep": {"kind": "logit_normal", "mean": 0.0, "std": 1.0, "shift": 1.0},
        "ida.lam": 0.97, "isg.weight": 1.0, "isg.margin": 20, "isg.guidance": {"low": 2.0, "high": 2.0},
        # one head on the last block: the heads' per-op cost dominates at 8x8. The world has no CLIP: its own
        # pooled prompt embedding goes through the authors' per-head equalized-lr layer (docs/FIDELITY.md)
        "gan.kind": "vfm", "gan.weight": 0.1, "gan.omega": "paper", "gan.backbone": "digits-vit", "gan.layers": [-1],
        "gan.virtual_batch": 8, "gan.text_condition": "pooled_per_head",
        # measured on this world (1000 iterations): lr 5e-5 / 2e-4 beat 1e-4 / 1e-4 and 3e-4 / 1e-3 on FID-T
        "optim.lr_generator": 5e-5, "optim.lr_fake": 2e-4, "optim.lr_disc": 2e-4, "optim.weight_decay": 0.0,
        "optim.ttur": 5,
        "train.iterations": 1000, "train.batch_size": 64, "train.checkpoint_every": 250, "train.log_every": 25,
        "train.threads": 1, "train.mixed_precision": "no", "train.gradient_checkpointing": False,
        # both samplers are reported ("Ours (Euler)" and "Ours" in the paper); metrics of the second get "@stochastic"
        "eval.metrics": ["fid_t", "fid", "prompt_accuracy", "diversity"], "eval.num_samples": 2000,
        "eval.batch_size": 500, "eval.samplers": ["euler", "stochastic"]},
}

# The DMD2 baseline on a teacher, as DMD2's released recipe trains it: no IDA, no ISG, its bottleneck classifier
# whose loss (x gan.disc_weight) also trains the fake score's body in the fake score's own update (one optimizer
# for both, so one learning rate: every teacher above has lr_disc = lr_fake), its GAN weights, and backward
# simulation on every iteration. DMD2 released no SD3.5 or FLUX recipe: those baselines take its mechanisms and
# GAN weights with the teacher's SenseFlow optimizer.
_DMD2 = {"name": "DMD2", "ida.enabled": False, "isg.enabled": False, "generator.backsim_prob": 1.0,
         "gan.kind": "dmd2", "gan.weight": 5e-3, "gan.disc_weight": 1e-2, "gan.omega": "one",
         "gan.train_fake_score_body": True}
# DMD2's SDXL recipe (experiments/sdxl, 4-step backsim run): generator / guidance lr 5e-7, AdamW weight decay
# 0.01, gradient clipping at 10
_DMD2_SDXL_OPTIM = {"optim.lr_generator": 5e-7, "optim.lr_fake": 5e-7, "optim.lr_disc": 5e-7,
                    "optim.weight_decay": 0.01, "optim.grad_clip": 10.0}
_SENSEFLOW = {"name": "SenseFlow"}

# Every preset: (teacher, what differs from the teacher's SenseFlow settings).
_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "sd35-large-senseflow": ("sd35-large", _SENSEFLOW),
    "sd35-large-dmd2": ("sd35-large", _DMD2),
    "sd35-medium-senseflow": ("sd35-medium", _SENSEFLOW),
    "sd35-medium-dmd2": ("sd35-medium", _DMD2),
    "flux-dev-senseflow": ("flux-dev", _SENSEFLOW),
    "flux-dev-dmd2": ("flux-dev", _DMD2),
    "sdxl-senseflow": ("sdxl", _SENSEFLOW),
    "sdxl-dmd2": ("sdxl", {**_DMD2, **_DMD2_SDXL_OPTIM}),
    # the authors' own DMD2-SDXL trainer (trainer_sdxl_DMD2.py): DMD2's losses and weights, no backward
    # simulation, the authors' SDXL optimizer (lr 1e-6, clipping at 1)
    "sdxl-dmd2-authors": ("sdxl", {**_DMD2, "name": "DMD2 (authors' trainer)", "generator.backsim_prob": 0.0}),
    "digits-senseflow": ("digits", _SENSEFLOW),
    "digits-dmd2": ("digits", {**_DMD2, "gan.weight": 1e-2}),  # the world's own GAN weight (tuned on it)
}
PRESETS = tuple(_PRESETS)


def _nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """{"a.b": 1, "a.c": 2} -> {"a": {"b": 1, "c": 2}} (later keys win, as in an override list)."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        out = _merge(out, _nest(key.split("."), value))
    return out


# ---------------------------------------------------------------------------- loading
def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _model_for(path: tuple[str, ...]) -> type[BaseModel] | None:
    cls: type[BaseModel] | None = RunConfig
    for part in path:
        if cls is None or part not in cls.model_fields:
            return None
        ann = cls.model_fields[part].annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return cls


def _check_keys(d: dict[str, Any], path: tuple[str, ...] = ()) -> None:
    """Unknown keys are errors, with a did-you-mean."""
    cls = _model_for(path)
    if cls is None:
        return
    for k, v in d.items():
        if k not in cls.model_fields and k not in cls.model_computed_fields:  # a derived key is checked by value
            where = ".".join(path + (k,))
            close = difflib.get_close_matches(k, list(cls.model_fields), n=1)
            hint = f"; did you mean '{'.'.join(path + (close[0],))}'?" if close else \
                f"; allowed here: {', '.join(cls.model_fields)}"
            raise ConfigError(f"unknown key '{where}'{hint}")
        if isinstance(v, dict):
            _check_keys(v, path + (k,))


def _format_validation(err: ValidationError, data: dict[str, Any]) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    value = first.get("input")
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "literal_error":
        allowed = first.get("ctx", {}).get("expected", "")
        return f"{loc}={value!r} is not allowed; expected one of {allowed}"
    shown = value if not isinstance(value, dict) else "{...}"
    return f"{loc}={shown!r}: {msg}" if loc else msg  # model-level messages name their keys


_YAML11_BOOL_WORDS = {"yes", "no", "on", "off", "y", "n"}


def _yaml_problem(e: Exception) -> str:
    """A YAML error's problem on one line (a reader error has no `problem` and spans two lines)."""
    return getattr(e, "problem", None) or " ".join(str(e).split())


def parse_override(text: str) -> tuple[list[str], Any]:
    """'isg.weight=0.5' -> (['isg', 'weight'], 0.5). Values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value (e.g. ida.lam=0.97)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key; write key.path=value")
    if raw.strip().lower() in _YAML11_BOOL_WORDS:  # YAML 1.1 reads "no"/"on" as booleans; keep them as words
        return key.split("."), raw.strip()
    try:
        value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw.strip() != "" else ""
    except ConfigError as e:
        raise ConfigError(f"override {key}={raw!r}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}={raw!r}: the value is not valid YAML ({_yaml_problem(e)})") from None
    except RecursionError:
        raise ConfigError(f"override {key}=...: the value is nested too deeply") from None
    return key.split("."), value


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(d)
    for o in overrides:
        path, value = parse_override(o)
        set_dotted(out, path, value)
    return out


def set_dotted(data: dict[str, Any], path: list[str], value: Any) -> None:
    """data[path[0]]...[path[-1]] = value in place, after checking the key exists (ConfigError otherwise)."""
    _check_keys(_nest(path, value))
    node = data
    for p in path[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[path[-1]] = copy.deepcopy(value)


def _nest(path: list[str], value: Any) -> dict[str, Any]:
    d: Any = value
    for p in reversed(path):
        d = {p: d}
    return d


def build(data: dict[str, Any]) -> RunConfig:
    """Validate a plain dict into a RunConfig, raising ConfigError on the first problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(data).__name__}")
    _check_keys(data)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, data)) from None


def preset(name: str) -> dict[str, Any]:
    """The preset's settings as a nested dict (its teacher's SenseFlow settings, then what differs)."""
    if name not in _PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown preset '{name}'{hint} (available: {', '.join(sorted(PRESETS))})")
    teacher, differs = _PRESETS[name]
    return _nested({**_TEACHERS[teacher], **differs, "preset": name})


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a mapping naming the same key twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: PyYAML reports it itself below
                continue
            if first is not key_node:
                raise ConfigError(f"key {key!r} appears twice (lines {first.start_mark.line + 1} and "
                                  f"{key_node.start_mark.line + 1}); keep one")
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path, *, what: str = "config file") -> dict[str, Any]:
    """A YAML mapping from a file: ConfigError when it is missing, empty, not YAML, repeats a key, or is
    not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} '{p}' does not exist")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} '{p}' cannot be read ({type(e).__name__}: {e})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as e:
        raise ConfigError(f"{what} '{p}': {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{what} '{p}' is not valid YAML{where}: {_yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{what} '{p}' is nested too deeply to read; flatten it") from None
    if data is None:
        raise ConfigError(f"{what} '{p}' is empty; give at least one key (e.g. preset: digits-senseflow)")
    if not isinstance(data, dict):
        raise ConfigError(f"{what} '{p}' must hold a mapping of keys, got {type(data).__name__}")
    return data


def resolve(source: str | Path | dict[str, Any] | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Preset name, YAML path or dict (a YAML may name `preset:` as its base) + dotted overrides."""
    if source is None:
        data: dict[str, Any] = {}
    elif isinstance(source, dict):
        data = copy.deepcopy(source)
    elif isinstance(source, str) and source in PRESETS:
        data = preset(source)
    elif isinstance(source, str) and not Path(source).suffix and not Path(source).exists():
        data = preset(source)  # raises with a did-you-mean
    else:
        data = load_yaml(source)
    base_name = data.get("preset")
    if base_name:
        if not isinstance(base_name, str):
            raise ConfigError(f"preset={base_name!r} must be a preset name (available: {', '.join(sorted(PRESETS))})")
        data = _merge(preset(base_name), data)  # the file's own keys win over its base preset
    data = apply_overrides(data, overrides or [])
    return build(data)


def save(cfg: RunConfig, path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(cfg.to_yaml())
    tmp.replace(p)
