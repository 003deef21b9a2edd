"""The discriminator's frozen backbone in the digits world: a tiny ViT of the DINOv2 architecture
(transformers' Dinov2Model), pretrained here on digits, saved with `save_pretrained` so that code taking a
DINOv2 hub id or local directory loads it unchanged (`Dinov2Model.from_pretrained(dir)`).

Input convention (the same as the released DINOv2 checkpoints): RGB pixel values normalised with the
ImageNet mean and std. Digits are grayscale in [-1, 1]; `pixel_values` repeats them to 3 channels, maps to
[0, 1] and normalises. The directory also holds a `preprocessor_config.json` saying the same (no resize or
crop: the backbone runs at the native 8x8, with 2x2 patches -> a 4x4 token grid plus CLS).

Pretraining objective: SimCLR-style InfoNCE (NT-Xent) between two augmented views of each train image
(1-pixel shifts, intensity scaling, Gaussian noise, a random 3x3 cutout), on the mean of the CLS output and
the mean patch token through a 2-layer projection head (discarded after training). Self-supervised, so
the backbone sees no labels: it is not a second copy of the evaluation classifier. Its quality figure is a
linear probe (logistic regression on the pooled CLS output, train -> held-out accuracy).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from senseflow.worlds.digits.classifier import random_shift
from senseflow.worlds.digits.config import BackboneConfig
from senseflow.worlds.digits.data import DigitsSplit

Tensor = torch.Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pixel_values(images: Tensor) -> Tensor:
    """(N, 1 or 3, H, W) in [-1, 1] -> (N, 3, H, W) ImageNet-normalised, as DINOv2 expects."""
    x = (images.clamp(-1, 1) + 1) / 2
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def make_backbone(cfg: BackboneConfig, seed: int | None = None):
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                          num_attention_heads=cfg.num_attention_heads, mlp_ratio=cfg.mlp_ratio, image_size=8,
                          patch_size=cfg.patch_size, num_channels=3)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return Dinov2Model(config)


def _augment(images: Tensor, rng: torch.Generator) -> Tensor:
    """One random view of (N, 1, 8, 8) digits in [-1, 1]."""
    n = images.shape[0]
    x = random_shift(images, rng)
    x01 = (x + 1) / 2 * (0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=rng))  # intensity 0.6..1.4
    x01 = x01 + 0.1 * torch.randn(x01.shape, generator=rng)
    # a 3x3 cutout in half of the views
    cy = torch.randint(0, 6, (n,), generator=rng).view(n, 1, 1, 1)
    cx = torch.randint(0, 6, (n,), generator=rng).view(n, 1, 1, 1)
    rows, cols = torch.arange(8).view(1, 1, 8, 1), torch.arange(8).view(1, 1, 1, 8)
    box = (rows >= cy) & (rows < cy + 3) & (cols >= cx) & (cols < cx + 3)
    use = (torch.rand(n, 1, 1, 1, generator=rng) < 0.5)
    x01 = torch.where(box & use, torch.zeros_like(x01), x01)
    return (x01.clamp(0, 1) * 2 - 1)


def embed(backbone: nn.Module, images: Tensor) -> Tensor:
    """The pretraining embedding: mean of the (layer-normed) CLS output and the mean patch token, (N, D)."""
    out = backbone(pixel_values=pixel_values(images))
    return 0.5 * (out.pooler_output + out.last_hidden_state[:, 1:].mean(1))


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """InfoNCE over 2N views: each view's positive is its pair, the other 2N - 2 are negatives."""
    z = nn.functional.normalize(torch.cat([z1, z2]), dim=-1)
    n = z1.shape[0]
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return nn.functional.cross_entropy(logits, target)


def pretrain_backbone(cfg: BackboneConfig, train: DigitsSplit, progress: bool = True) -> tuple[nn.Module, list[float]]:
    """Self-supervised pretraining; returns (backbone in eval mode, frozen; per-step losses)."""
    from senseflow.progress import bar as tqdm  # plain lines when not on a terminal

    rng = torch.Generator().manual_seed(cfg.seed)
    backbone = make_backbone(cfg, seed=cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        proj = nn.Sequential(nn.Linear(cfg.hidden_size, cfg.hidden_size), nn.ReLU(), nn.Linear(cfg.hidden_size, 32))
        recon = nn.Linear(cfg.hidden_size, cfg.patch_size ** 2)  # masked patch -> its pixels
    params = list(backbone.parameters()) + list(proj.parameters()) + list(recon.parameters())
    side = 8 // cfg.patch_size
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.05)
    warmup = max(1, cfg.steps // 10)

    def lr_factor(i: int) -> float:  # linear warmup, cosine decay to 0
        if i < warmup:
            return (i + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(1, cfg.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    backbone.train()
    losses = []
    bar = tqdm(range(cfg.steps), desc="backbone", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        idx = torch.randint(len(train), (cfg.batch_size,), generator=rng)
        x = train.images[idx]
        loss = nt_xent(proj(embed(backbone, _augment(x, rng))), proj(embed(backbone, _augment(x, rng))), cfg.temperature)
        if cfg.mask_weight > 0:
            # masked-patch reconstruction: patch tokens learn local structure (the discriminator reads them)
            mask = torch.rand(x.shape[0], side * side, generator=rng) < cfg.mask_ratio
            tokens = backbone(pixel_values=pixel_values(x), bool_masked_pos=mask).last_hidden_state[:, 1:]
            target = x.unfold(2, cfg.patch_size, cfg.patch_size).unfold(3, cfg.patch_size, cfg.patch_size)
            target = target.reshape(x.shape[0], side * side, cfg.patch_size ** 2)
            err = ((recon(tokens) - target) ** 2).mean(-1)
            loss = loss + cfg.mask_weight * (err * mask).sum() / mask.sum().clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    return backbone.eval().requires_grad_(False), losses


@torch.no_grad()
def linear_probe_accuracy(backbone: nn.Module, train: DigitsSplit, held_out: DigitsSplit) -> float:
    """Logistic regression on [pooled CLS output, mean patch token]: fit on train, accuracy on held-out."""
    from sklearn.linear_model import LogisticRegression

    def feats(images: Tensor):
        out = backbone(pixel_values=pixel_values(images))
        return torch.cat([out.pooler_output, out.last_hidden_state[:, 1:].mean(1)], 1).numpy()

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    clf.fit(feats(train.images), train.labels.numpy())
    return float(clf.score(feats(held_out.images), held_out.labels.numpy()))


def save_backbone(backbone: nn.Module, directory: str | Path) -> None:
    """`save_pretrained` (config.json + model.safetensors) plus a DINOv2-style preprocessor_config.json."""
    directory = Path(directory)
    backbone.save_pretrained(str(directory), safe_serialization=True)
    size = backbone.config.image_size
    pre = {"image_processor_type": "BitImageProcessor", "do_convert_rgb": True, "do_resize": False,
           "size": {"height": size, "width": size}, "do_center_crop": False,
           "crop_size": {"height": size, "width": size},
           "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
           "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}
    (directory / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")


def load_backbone(directory: str | Path) -> nn.Module:
    from transformers import Dinov2Model

    return Dinov2Model.from_pretrained(str(directory)).eval().requires_grad_(False)
