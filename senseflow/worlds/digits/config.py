"""The digits world's configuration: every size, schedule, seed and learning rate, hashed into its cache key.

Two worlds with the same `DigitsWorldConfig` are the same world: they share one cache directory,
`<root>/worlds/digits-<hash>/`, where root is $SENSEFLOW_CACHE, else $XDG_CACHE_HOME/senseflow, else
~/.cache/senseflow (a per-user cache, as Hugging Face's: the same world whatever the current directory).
Changing any field (or `version`, bumped when the code changes what it builds)
gives a new hash and a fresh build.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from senseflow.backbones import DIGITS_VIT_DEPTH

CACHE_ENV = "SENSEFLOW_CACHE"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    held_out_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of each digit kept out of training")
    split_seed: int = 0


class TextConfig(_Section):
    # The longest prompt of the world is 9 MiniLM tokens ([CLS] and [SEP] included); every token costs as
    # much as an image token in the joint attention, so the length is kept tight.
    text_length: int = Field(10, ge=4, le=64, description="token states per prompt (L)")


class TeacherConfig(_Section):
    """A small SD3-architecture MMDiT in pixel space. 8x8 images, 2x2 patches -> 16 image tokens."""

    num_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(2, ge=1)
    attention_head_dim: int = Field(32, ge=4)
    patch_size: int = Field(2, ge=1, le=8)
    steps: int = Field(4000, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(200, ge=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    prompt_dropout: float = Field(0.1, ge=0, le=1, description="share of prompts replaced by '' (for CFG)")
    logit_mean: float = 0.0
    logit_std: float = Field(1.0, gt=0)
    seed: int = 1


class SamplingConfig(_Section):
    """How the teacher is sampled for the world's figures and reference sets."""

    steps: int = Field(50, ge=1)
    cfg_scale: float = Field(2.0, ge=0)
    shift: float = Field(1.0, gt=0, description="timestep shift of the Euler schedule")
    table_shift: float = Field(1.0, gt=0, description="shift of the world's 1000-entry sigma table")
    anchor_indices: tuple[int, ...] = Field((999, 749, 499, 249), description="the student's anchors in the table")


class ClassifierConfig(_Section):
    """The evaluation CNN (never a discriminator backbone or a training signal)."""

    feature_dim: int = Field(64, ge=8)
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0)
    seed: int = 2


class BackboneConfig(_Section):
    """The discriminator's frozen backbone: a tiny Dinov2Model, pretrained by SimCLR-style InfoNCE plus
    masked-patch reconstruction. Width 32: the VFM discriminator's heads are as wide as the backbone."""

    hidden_size: int = Field(32, ge=8)
    num_hidden_layers: int = Field(DIGITS_VIT_DEPTH, ge=1)
    num_attention_heads: int = Field(2, ge=1)
    mlp_ratio: int = Field(2, ge=1)
    patch_size: int = Field(2, ge=1, le=8)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0)
    temperature: float = Field(0.2, gt=0)
    mask_ratio: float = Field(0.4, ge=0, le=1, description="share of patches masked for the reconstruction term")
    mask_weight: float = Field(5.0, ge=0, description="weight of masked-patch reconstruction (0: InfoNCE only)")
    seed: int = 3


class ReferenceConfig(_Section):
    """Teacher samples on the held-out prompts, cached once per world for FID-T and its floor."""

    num_samples: int = Field(2000, ge=10)
    seed: int = 1234
    floor_seed: int = 5678
    bootstrap: int = Field(200, ge=0, description="bootstrap resamples for every FID's 95% interval")


# The benchmark settings of version 1, hashed then (a `bench` section, now senseflow.bench.step's arguments):
# this constant keeps every world's hash (the default world's is 7a69a9abbcae).
_HASHED_BENCH = {"batch_size": 64, "disc_layers": [-1], "disc_reference": True, "iterations": 10, "threads": [1, 2]}


class DigitsWorldConfig(_Section):
    """Everything that decides what the digits world builds, hashed into the cache key."""

    version: int = 1
    data: DataConfig = DataConfig()
    text: TextConfig = TextConfig()
    teacher: TeacherConfig = TeacherConfig()
    sampling: SamplingConfig = SamplingConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    backbone: BackboneConfig = BackboneConfig()
    reference: ReferenceConfig = ReferenceConfig()

    @model_validator(mode="after")
    def _check(self) -> "DigitsWorldConfig":
        for name, sec in (("teacher", self.teacher), ("backbone", self.backbone)):
            if 8 % sec.patch_size:
                raise ValueError(f"{name}.patch_size={sec.patch_size} must divide the image size 8 (use 1, 2, 4 or 8)")
        if self.backbone.hidden_size % self.backbone.num_attention_heads:
            raise ValueError(f"backbone.hidden_size={self.backbone.hidden_size} must be a multiple of "
                             f"backbone.num_attention_heads={self.backbone.num_attention_heads}")
        if any(not 0 <= i < 1000 for i in self.sampling.anchor_indices):
            raise ValueError(f"sampling.anchor_indices={self.sampling.anchor_indices} must lie in [0, 999]")
        return self

    # ------------------------------------------------------------------ identity
    def config_hash(self) -> str:
        """12 hex digits of sha256 over the canonical JSON of every field (and the constant of the benchmark
        settings that version 1 hashed)."""
        d = self.model_dump(mode="json")
        d["bench"] = _HASHED_BENCH
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def artifact_keys(self) -> dict[str, str]:
        """A hash per artifact over only the sections it depends on, so that a world differing in, say, the
        CFG scale of its reference samples reuses (copies) the teacher of a cached sibling world."""
        d = self.model_dump(mode="json")
        deps = {
            "data": ["data"], "text": ["text"], "classifier": ["data", "classifier"], "backbone": ["data", "backbone"],
            "teacher": ["data", "text", "teacher"],
            "reference": ["data", "text", "teacher", "sampling", "reference"],
        }
        deps["floor"] = deps["baseline"] = deps["reference"]
        out = {}
        for name, sections in deps.items():
            blob = json.dumps({"version": self.version, **{k: d[k] for k in sections}}, sort_keys=True,
                              separators=(",", ":"))
            out[name] = hashlib.sha256(blob.encode()).hexdigest()[:12]
        return out

    def cache_dir(self, root: str | os.PathLike | None = None) -> Path:
        return cache_root(root) / "worlds" / f"digits-{self.config_hash()}"

    # ------------------------------------------------------------------ presets
    @classmethod
    def quick(cls) -> "DigitsWorldConfig":
        """A shortened schedule for tests and smoke runs (seconds, not minutes); the figures are not the world's."""
        return cls(
            teacher=TeacherConfig(steps=400, batch_size=64, warmup_steps=20, lr=2e-3, ema_decay=0.98),
            classifier=ClassifierConfig(epochs=8),
            backbone=BackboneConfig(steps=10, batch_size=64),
            reference=ReferenceConfig(num_samples=100, bootstrap=20),
            sampling=SamplingConfig(steps=10),
        )

    def with_overrides(self, overrides: list[str] | dict[str, object]) -> "DigitsWorldConfig":
        """Apply dotted overrides, e.g. ["teacher.steps=100", "sampling.cfg_scale=2"] (values parsed as JSON)."""
        items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
        data = self.model_dump()
        for key, value in items:
            node, parts = data, key.split(".")
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    raise KeyError(f"unknown digits-world config key {key!r}: {p!r} is not a section "
                                   f"(sections: {sorted(k for k, v in data.items() if isinstance(v, dict))})")
                node = node[p]
            if parts[-1] not in node:
                raise KeyError(f"unknown digits-world config key {key!r}; known keys here: {sorted(node)}")
            node[parts[-1]] = value
        return type(self).model_validate(data)


def _split_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise KeyError(f"override {text!r} must look like key=value, e.g. teacher.steps=100")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def cache_root(root: str | os.PathLike | None = None) -> Path:
    """The senseflow cache root: the argument (--cache-dir), else $SENSEFLOW_CACHE, else
    $XDG_CACHE_HOME/senseflow, else ~/.cache/senseflow."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "senseflow"
