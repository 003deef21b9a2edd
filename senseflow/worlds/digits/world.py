"""`build_world`: train what is missing, load what is cached, and hand back one `DigitsWorld`.

Cache layout, `<root>/worlds/digits-<config hash>/` (root: the `cache_dir` argument, else $SENSEFLOW_CACHE,
else $XDG_CACHE_HOME/senseflow or ~/.cache/senseflow); weights are safetensors, never pickle:

    config.json                 the resolved DigitsWorldConfig (what the hash covers)
    data.safetensors            train / held-out images and labels (the seeded split)
    text_cache.safetensors      MiniLM encodings of every world prompt (prompts in the metadata)
    classifier.safetensors      the evaluation CNN
    backbone/                   the tiny DINOv2 (save_pretrained: config.json, model.safetensors,
                                preprocessor_config.json)
    teacher/                    the SD3 transformer (save_pretrained: config.json, diffusion_pytorch_model.safetensors)
    teacher_loss.json / .png    the teacher's training loss curve
    reference.safetensors       teacher samples (50 Euler steps, CFG) on the held-out prompts, fixed seeds (FID-T)
    floor.safetensors           a second, independent teacher sample set (the FID-T floor)
    baseline.safetensors        the teacher sampled at the student's 4 anchors (the do-nothing baseline)
    figures.json                the world's figures (accuracies, FIDs with 95% intervals, build timings)
    samples/digit_<d>.png       teacher samples per digit (and samples/overview.png)

Every file is written to a temporary name and renamed, so an interrupted build never leaves a half file.
Each artifact also has its own key (`DigitsWorldConfig.artifact_keys`: a hash of only the config sections it
depends on); a missing artifact is copied from a sibling world directory with the same key instead of being
rebuilt, so changing e.g. sampling.cfg_scale re-samples the references without retraining the teacher.

`senseflow.worlds.digits.cache.cached_manifest` checks, without torch, that every file above that `build_world`
would load is present and whole; `senseflow world digits build` uses it to answer a complete cache at once.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from senseflow import flow
from senseflow.models.base import Conditioning, IdentityCodec, ModelBundle
from senseflow.models.sd3 import SD3Denoiser
from senseflow.worlds.digits import teacher as teacher_mod
from senseflow.worlds.digits.cache import GRID_FILES
from senseflow.worlds.digits.classifier import DigitClassifier, train_classifier
from senseflow.worlds.digits.config import DigitsWorldConfig
from senseflow.worlds.digits.data import (IMAGE_SHAPE, DigitsBatch, DigitsData, DigitsSplit, all_prompts,
                                          held_out_prompt_cycle)
from senseflow.worlds.digits.text import DigitsTextEncoder

Tensor = torch.Tensor
FAMILY = "digits"

# The files of each artifact; the first one marks the artifact complete (written last).
ARTIFACT_FILES = {
    "data": ["data.safetensors"], "text": ["text_cache.safetensors"], "classifier": ["classifier.safetensors"],
    "backbone": ["backbone", "backbone_probe.json"], "teacher": ["teacher", "teacher_loss.json", "teacher_loss.png"],
    "reference": ["reference.safetensors"], "floor": ["floor.safetensors"], "baseline": ["baseline.safetensors"],
}


# ----------------------------------------------------------------------------- small I/O helpers
def _save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


def _load_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def _save_dir(path: Path, save) -> None:
    """Run `save(tmp_dir)` then rename tmp_dir to path (replacing a stale one)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    shutil.rmtree(path, ignore_errors=True)
    tmp.replace(path)


@contextlib.contextmanager
def _quiet_hub(quiet: bool):
    """Silence the progress bars of huggingface_hub and transformers (loading / "Writing model shards")."""
    if not quiet:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    hub_was_off, tf_was_on = are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()
    disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not hub_was_off:
            enable_progress_bars()
        if tf_was_on:
            hf_logging.enable_progress_bar()


# ----------------------------------------------------------------------------- the world
@dataclass
class ReferenceSet:
    """Samples on fixed prompts and seeds: prompts (N strings), labels (N,), noise (N, 1, 8, 8) at sigma = 1,
    samples (N, 1, 8, 8) (unclamped), and the sigmas the teacher's Euler sampler used."""

    prompts: list[str]
    labels: Tensor
    noise: Tensor
    samples: Tensor
    sigmas: list[float]

    def __len__(self) -> int:
        return self.samples.shape[0]


@dataclass
class DigitsWorld:
    """The digits world: data, prompts, frozen text encoder, teacher, evaluation classifier, discriminator
    backbone directory, cached teacher reference samples and the world's figures.

    bundle: ModelBundle(family "digits", teacher SD3Denoiser, DigitsTextEncoder, IdentityCodec,
        latent_shape (1, 8, 8), the world's 1000-entry sigma table, image_channels 1).
    anchors: the student's 4 anchor sigmas, `bundle.sigma_table[config.sampling.anchor_indices]`.
    provenance: for each artifact, "trained"/"computed" (built in this call), "loaded" (from the cache) or
        "reused:<sibling world>" (copied from a cached world whose artifact had the same inputs).
    """

    config: DigitsWorldConfig
    directory: Path
    bundle: ModelBundle
    data: DigitsData
    classifier: DigitClassifier
    backbone_dir: Path
    reference: ReferenceSet
    floor: ReferenceSet
    baseline: ReferenceSet
    figures: dict
    provenance: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ convenience views
    @property
    def teacher(self) -> SD3Denoiser:
        return self.bundle.teacher

    @property
    def text_encoder(self) -> DigitsTextEncoder:
        return self.bundle.text_encoder

    @property
    def anchor_indices(self) -> tuple[int, ...]:
        return tuple(self.config.sampling.anchor_indices)

    @property
    def anchors(self) -> list[float]:
        return teacher_mod.anchor_sigmas(self.bundle.sigma_table, self.anchor_indices)

    @property
    def train(self) -> DigitsSplit:
        return self.data.train

    @property
    def held_out(self) -> DigitsSplit:
        return self.data.held_out

    # ------------------------------------------------------------------ data and conditioning
    def sample_batch(self, batch_size: int, rng: torch.Generator, split: str = "train") -> DigitsBatch:
        """(images (B, 1, 8, 8) in [-1, 1], B prompts, labels (B,)) drawn with `rng`; prompts use the
        split's templates (training templates for "train", held-out templates for "held_out")."""
        if split not in ("train", "held_out"):
            raise ValueError(f"split={split!r}: expected 'train' or 'held_out'")
        return getattr(self.data, split).sample(batch_size, rng)

    def encode(self, prompts: list[str]) -> Conditioning:
        return self.text_encoder.encode(prompts)

    def uncond(self, batch: int = 1) -> Conditioning:
        return self.text_encoder.uncond(batch)

    # ------------------------------------------------------------------ teacher sampling
    def sample_teacher(self, prompts: list[str], noise: Tensor, *, steps: int | None = None,
                       sigmas: list[float] | None = None, cfg_scale: float | None = None) -> Tensor:
        """Teacher Euler + CFG from `noise` (N, 1, 8, 8) at sigma = 1. Defaults: config.sampling (50 steps,
        its CFG scale and shift). `sigmas` (descending, ending at 0) overrides the schedule."""
        return teacher_mod.sample_prompts(self.teacher, self.text_encoder, prompts, noise, self.config.sampling,
                                          steps=steps, sigmas=sigmas, cfg_scale=cfg_scale)

    def sample_teacher_at_anchors(self, prompts: list[str], noise: Tensor, cfg_scale: float | None = None) -> Tensor:
        """The do-nothing baseline: teacher Euler + CFG on the student's anchors (then to 0)."""
        return self.sample_teacher(prompts, noise, sigmas=self.anchors + [0.0], cfg_scale=cfg_scale)

    def load_backbone(self):
        """The discriminator backbone (Dinov2Model, frozen); code elsewhere may load `backbone_dir` itself."""
        from senseflow.worlds.digits.backbone import load_backbone

        return load_backbone(self.backbone_dir)


# ----------------------------------------------------------------------------- building
class _Builder:
    """Builds or loads each artifact of one world directory; records what it did in `provenance`."""

    def __init__(self, cfg: DigitsWorldConfig, cache_dir: str | Path | None, progress: bool):
        self.cfg = cfg
        self.dir = cfg.cache_dir(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.provenance: dict[str, str] = {}
        self.reused: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self.keys = cfg.artifact_keys()
        cfg_path = self.dir / "config.json"
        if not cfg_path.exists():
            _write_json(cfg_path, {"hash": cfg.config_hash(), "artifacts": self.keys,
                                   "config": cfg.model_dump(mode="json")})

    def _reuse(self, name: str) -> bool:
        """Copy artifact `name` from a sibling world whose artifact key matches (same inputs); True if copied."""
        paths = ARTIFACT_FILES[name]
        if (self.dir / paths[0]).exists():
            return False
        for sibling in sorted(self.dir.parent.glob("digits-*")):
            if sibling == self.dir or not all((sibling / p).exists() for p in paths[:1]):
                continue
            try:
                keys = json.loads((sibling / "config.json").read_text()).get("artifacts", {})
            except (OSError, json.JSONDecodeError):
                continue
            if keys.get(name) != self.keys[name]:
                continue
            for p in reversed(paths):  # the first path last: it marks the artifact complete
                src, dst = sibling / p, self.dir / p
                if not src.exists():
                    continue
                if src.is_dir():
                    _save_dir(dst, lambda d: shutil.copytree(src, d))
                else:
                    tmp = dst.with_name(dst.name + ".tmp")
                    shutil.copy2(src, tmp)
                    tmp.replace(dst)
            self._log(f"{name}: reused from {sibling.name}")
            self.reused[name] = sibling.name
            return True
        return False

    def _log(self, msg: str) -> None:
        if self.progress:
            from rich.console import Console

            Console(stderr=True).print(f"[dim]digits world:[/] {msg}", highlight=False)

    def _timed(self, name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        return out

    # ------------------------------------------------------------------ artifacts
    def data(self) -> DigitsData:
        path = self.dir / "data.safetensors"
        if self._reuse("data") or path.exists():
            t, _ = _load_tensors(path)
            from senseflow.worlds.digits.data import HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, prompt_for

            def split(prefix, templates):
                lab = t[f"{prefix}_labels"]
                prompts = [prompt_for(templates[i % len(templates)], int(d)) for i, d in enumerate(lab.tolist())]
                return DigitsSplit(t[f"{prefix}_images"], lab, prompts, templates)

            self.provenance["data"] = "loaded"
            return DigitsData(split("train", TRAIN_TEMPLATES), split("held_out", HELD_OUT_TEMPLATES))
        d = DigitsData.load(self.cfg.data.held_out_fraction, self.cfg.data.split_seed)
        _save_tensors(path, {"train_images": d.train.images, "train_labels": d.train.labels,
                             "held_out_images": d.held_out.images, "held_out_labels": d.held_out.labels})
        self.provenance["data"] = "computed"
        return d

    def text_encoder(self) -> DigitsTextEncoder:
        enc = DigitsTextEncoder(self.cfg.text.text_length)
        path = self.dir / "text_cache.safetensors"
        if self._reuse("text") or path.exists():
            enc.load_cache(path)
        missing = [p for p in all_prompts() if p not in set(enc.cached_prompts)]
        if missing:
            self._log("encoding the prompts with MiniLM")
            with _quiet_hub(not self.progress):
                self._timed("text", lambda: enc.precompute(all_prompts()))
            enc.save_cache(path)
            self.provenance["text"] = "computed"
        else:
            self.provenance["text"] = "loaded"
        return enc

    def classifier(self, data: DigitsData) -> DigitClassifier:
        from safetensors.torch import load_file, save_file

        path = self.dir / "classifier.safetensors"
        model = DigitClassifier(self.cfg.classifier.feature_dim)
        if self._reuse("classifier") or path.exists():
            model.load_state_dict(load_file(str(path)))
            self.provenance["classifier"] = "loaded"
            return model.eval()
        self._log("training the evaluation classifier")
        model = self._timed("classifier", lambda: train_classifier(self.cfg.classifier, data.train, self.progress))
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
        tmp.replace(path)
        self.provenance["classifier"] = "trained"
        return model

    def backbone(self, data: DigitsData) -> tuple[Path, float | None]:
        from senseflow.worlds.digits import backbone as bb

        path = self.dir / "backbone"
        if self._reuse("backbone") or (path / "config.json").exists():
            self.provenance["backbone"] = "loaded"
            return path, None
        self._log("pretraining the discriminator backbone (tiny DINOv2, SimCLR)")
        model, _ = self._timed("backbone", lambda: bb.pretrain_backbone(self.cfg.backbone, data.train, self.progress))
        probe = bb.linear_probe_accuracy(model, data.train, data.held_out)
        _write_json(self.dir / "backbone_probe.json", {"linear_probe_held_out_accuracy": probe})
        with _quiet_hub(not self.progress):
            _save_dir(path, lambda d: bb.save_backbone(model, d))
        self.provenance["backbone"] = "trained"
        return path, probe

    def teacher(self, data: DigitsData, text: DigitsTextEncoder) -> SD3Denoiser:
        path = self.dir / "teacher"
        if self._reuse("teacher") or (path / "config.json").exists():
            from diffusers import SD3Transformer2DModel

            self.provenance["teacher"] = "loaded"
            model = SD3Denoiser(SD3Transformer2DModel.from_pretrained(str(path)))
            return model.eval().requires_grad_(False)
        self._log("training the teacher (SD3 MMDiT, rectified flow)")
        model, losses = self._timed("teacher", lambda: teacher_mod.train_teacher(self.cfg.teacher, data.train, text,
                                                                                  self.progress))
        _write_json(self.dir / "teacher_loss.json", {"loss": losses})
        _plot_loss(losses, self.dir / "teacher_loss.png")
        with _quiet_hub(not self.progress):
            _save_dir(path, lambda d: model.backbone.save_pretrained(str(d), safe_serialization=True))
        self.provenance["teacher"] = "trained"
        return model.eval().requires_grad_(False)

    def reference_sets(self, world_parts: dict) -> dict[str, ReferenceSet]:
        """reference (seed), floor (floor_seed): 50-step Euler + CFG; baseline: reference noise at the anchors."""
        r = self.cfg.reference
        s = self.cfg.sampling
        prompts_cycle, labels_cycle = held_out_prompt_cycle()
        n = r.num_samples
        prompts = [prompts_cycle[i % len(prompts_cycle)] for i in range(n)]
        labels = torch.tensor([labels_cycle[i % len(labels_cycle)] for i in range(n)])
        teacher, text = world_parts["teacher"], world_parts["text"]
        table = flow.sigma_table(1000, s.table_shift)
        full = teacher_mod.euler_sigmas(s.steps, s.shift)
        anchors = teacher_mod.anchor_sigmas(table, s.anchor_indices) + [0.0]
        out = {}
        for name, seed, sigmas in (("reference", r.seed, full), ("floor", r.floor_seed, full),
                                   ("baseline", r.seed, anchors)):
            path = self.dir / f"{name}.safetensors"
            if self._reuse(name) or path.exists():
                t, meta = _load_tensors(path)
                out[name] = ReferenceSet(json.loads(meta["prompts"]), t["labels"], t["noise"], t["samples"],
                                         json.loads(meta["sigmas"]))
                self.provenance[name] = "loaded"
                continue
            self._log(f"sampling the teacher: {name} ({n} samples, {len(sigmas) - 1} Euler steps, CFG {s.cfg_scale})")
            noise = torch.randn((n, *IMAGE_SHAPE), generator=torch.Generator().manual_seed(seed))
            samples = self._timed(f"sample_{name}", lambda: teacher_mod.sample_prompts(
                teacher, text, prompts, noise, s, sigmas=sigmas))
            _save_tensors(path, {"labels": labels, "noise": noise, "samples": samples},
                          {"prompts": json.dumps(prompts), "sigmas": json.dumps(sigmas)})
            out[name] = ReferenceSet(prompts, labels, noise, samples, sigmas)
            self.provenance[name] = "computed"
        return out


def _plot_loss(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = torch.tensor(losses)
    k = max(1, len(losses) // 100)
    smooth = x.unfold(0, k, k).mean(1) if len(losses) >= k else x
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(losses)), losses, alpha=0.25, lw=0.5, label="per step")
    ax.plot([k * (i + 0.5) for i in range(len(smooth))], smooth.tolist(), lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_yscale("log")
    ax.set_title("digits teacher (rectified flow)")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name("tmp_" + path.name)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def save_sample_grids(samples: Tensor, labels: Tensor, directory: Path, per_digit: int = 64,
                      scale: int = 4) -> list[Path]:
    """One PNG per digit (a square grid of up to `per_digit` samples) and overview.png (a row per digit)."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)

    def grid(images: Tensor, cols: int) -> Image.Image:
        from torchvision.utils import make_grid

        pix = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        pix = 255 - pix.repeat_interleave(scale, 2).repeat_interleave(scale, 3)  # dark ink on white
        canvas = make_grid(pix, nrow=cols, padding=2, pad_value=255)[0]  # one channel (make_grid repeats it)
        return Image.fromarray(canvas.numpy(), mode="L")

    paths = []
    for d in range(10):
        imgs = samples[labels == d][:per_digit]
        if imgs.shape[0] == 0:
            continue
        p = directory / f"digit_{d}.png"
        grid(imgs, int(per_digit ** 0.5)).save(p)
        paths.append(p)
    row = min(16, min(int((labels == d).sum()) for d in range(10)))
    if row > 0:
        overview = torch.cat([samples[labels == d][:row] for d in range(10)])
        p = directory / "overview.png"
        grid(overview, row).save(p)
        paths.append(p)
    return paths


def compute_figures(world: DigitsWorld, probe: float | None, seconds: dict[str, float]) -> dict:
    """The world's figures, each with the target it must reach (`senseflow world digits` shows them), with a 95%
    bootstrap interval on every FID."""
    from evals import digits as ev

    cfg = world.config
    nb = cfg.reference.bootstrap
    ref, floor, base = world.reference, world.floor, world.baseline
    teacher_params = sum(p.numel() for p in world.teacher.parameters())
    loss_path = world.directory / "teacher_loss.json"
    losses = json.loads(loss_path.read_text())["loss"] if loss_path.exists() else []
    fig = {
        "config_hash": cfg.config_hash(),
        "classifier_held_out_accuracy": world.classifier.accuracy(world.held_out.images, world.held_out.labels),
        "backbone_linear_probe_accuracy": probe,
        "teacher": {
            "params": teacher_params,
            "final_loss": (sum(losses[-100:]) / len(losses[-100:])) if losses else None,
            "steps": cfg.sampling.steps, "cfg_scale": cfg.sampling.cfg_scale, "shift": cfg.sampling.shift,
            "prompt_accuracy": ev.prompt_accuracy(ref.samples, ref.labels, world),
            "fid_real": ev.fid_real(ref.samples, world, nb).as_dict(),
            "diversity": ev.per_prompt_diversity(ref.samples, ref.prompts, world)["mean"],
        },
        "teacher_floor": {
            # same prompts, other seeds: paired resampling keeps the prompt mix of both sets equal
            "fid_t": ev.fid(floor.samples, ref.samples, world, nb, resample="paired").as_dict(),
            "prompt_accuracy": ev.prompt_accuracy(floor.samples, floor.labels, world),
        },
        "real_floor": {"fid_train_vs_held_out": ev.fid(world.train.images, world.held_out.images, world, nb,
                                                                resample="first").as_dict()},
        "baseline_4step": {
            "anchor_indices": list(cfg.sampling.anchor_indices), "sigmas": base.sigmas,
            "fid_t": ev.fid_t(base.samples, world, nb).as_dict(),
            "fid_real": ev.fid_real(base.samples, world, nb).as_dict(),
            "prompt_accuracy": ev.prompt_accuracy(base.samples, base.labels, world),
            "diversity": ev.per_prompt_diversity(base.samples, base.prompts, world)["mean"],
        },
        "num_reference_samples": len(ref),
    }
    fig["build_seconds"] = dict(seconds)
    return fig


def build_world(cfg: DigitsWorldConfig | None = None, cache_dir: str | Path | None = None,
                progress: bool = True, figures: bool = True, grids: bool = True) -> DigitsWorld:
    """Build (train what is missing) or load (what is cached) the digits world.

    cache_dir: the senseflow cache root (default $SENSEFLOW_CACHE, else $XDG_CACHE_HOME/senseflow or
        ~/.cache/senseflow); the world lives in `<cache_dir>/worlds/digits-<config hash>/`.
    figures: compute figures.json when missing (FIDs, accuracies; the timings of Distiller.step on the world
        are `senseflow bench step`'s, see senseflow.bench.step).
    grids: write samples/digit_<d>.png and overview.png when any is missing.
    """
    cfg = cfg or DigitsWorldConfig()
    t_start = time.perf_counter()
    b = _Builder(cfg, cache_dir, progress)
    data = b.data()
    text = b.text_encoder()
    classifier = b.classifier(data)
    backbone_dir, probe = b.backbone(data)
    teacher = b.teacher(data, text)
    refs = b.reference_sets({"teacher": teacher, "text": text})
    bundle = ModelBundle(family=FAMILY, teacher=teacher, text_encoder=text, codec=IdentityCodec(),
                         latent_shape=IMAGE_SHAPE, sigma_table=flow.sigma_table(1000, cfg.sampling.table_shift),
                         image_channels=1)
    b.provenance.update({k: f"reused:{v}" for k, v in b.reused.items()})
    world = DigitsWorld(cfg, b.dir, bundle, data, classifier, backbone_dir, refs["reference"], refs["floor"],
                        refs["baseline"], {}, b.provenance)
    fig_path = b.dir / "figures.json"
    new_figures = False
    if fig_path.exists():
        world.figures = json.loads(fig_path.read_text())
        b.provenance["figures"] = "loaded"
    elif figures:
        if probe is None and (b.dir / "backbone_probe.json").exists():
            probe = json.loads((b.dir / "backbone_probe.json").read_text())["linear_probe_held_out_accuracy"]
        b._log("computing the figures (FIDs with bootstrap intervals)")
        with _quiet_hub(not progress):
            world.figures = b._timed("figures", lambda: compute_figures(world, probe, b.seconds))
        new_figures = True
    if grids and not all((b.dir / f).exists() for f in GRID_FILES):
        save_sample_grids(world.reference.samples, world.reference.labels, b.dir / "samples")
        b.provenance["grids"] = "computed"
    if new_figures:
        seconds = world.figures["build_seconds"]
        seconds["figures"] = b.seconds["figures"]
        # "from nothing" only when every artifact was built in this call
        seconds["total"] = round(time.perf_counter() - t_start, 2)
        seconds["from_nothing"] = all(v != "loaded" for v in b.provenance.values())
        _write_json(fig_path, world.figures)
        b.provenance["figures"] = "computed"
    return world


def build_teacher(cfg: DigitsWorldConfig | None = None, cache_dir: str | Path | None = None,
                  progress: bool = True) -> tuple[SD3Denoiser, DigitsTextEncoder, DigitsData, Path, dict[str, str]]:
    """Only the teacher (and the data and text cache it needs): (teacher, text encoder, data, world dir, provenance)."""
    cfg = cfg or DigitsWorldConfig()
    b = _Builder(cfg, cache_dir, progress)
    data = b.data()
    text = b.text_encoder()
    teacher = b.teacher(data, text)
    b.provenance.update({k: f"reused:{v}" for k, v in b.reused.items()})
    return teacher, text, data, b.dir, b.provenance
