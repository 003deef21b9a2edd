"""The evaluation network: a small CNN digit classifier trained on the train split.

It gives penultimate features (for FID and FID-T) and predicted labels (for prompt accuracy). It is for
evaluation only: never a discriminator backbone, never a training signal.
"""

from __future__ import annotations

import torch
from torch import nn

from senseflow.worlds.digits.config import ClassifierConfig
from senseflow.worlds.digits.data import DigitsSplit

Tensor = torch.Tensor


class DigitClassifier(nn.Module):
    """(N, 1, 8, 8) in [-1, 1] -> logits (N, 10). Inputs are clamped to [-1, 1] (samples may overshoot)."""

    def __init__(self, feature_dim: int = 64):
        super().__init__()
        self.feature_dim = feature_dim
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),                                   # 4x4
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),                                   # 2x2
            nn.Flatten(),
            nn.Linear(64 * 4, feature_dim), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, 10)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.dropout(self.body(images.clamp(-1, 1))))

    @torch.no_grad()
    def features(self, images: Tensor, batch_size: int = 2048) -> Tensor:
        """Penultimate features (N, feature_dim), float32, in eval mode."""
        was = self.training
        self.eval()
        out = torch.cat([self.body(images[i:i + batch_size].clamp(-1, 1).float())
                         for i in range(0, images.shape[0], batch_size)])
        self.train(was)
        return out

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 2048) -> Tensor:
        """Predicted digits (N,) int64."""
        return self.head(self.features(images, batch_size)).argmax(-1)

    @torch.no_grad()
    def accuracy(self, images: Tensor, labels: Tensor) -> float:
        return (self.predict(images) == labels).float().mean().item()


def random_shift(images: Tensor, rng: torch.Generator, max_shift: int = 1) -> Tensor:
    """Translate each image by up to `max_shift` pixels (background -1 fills in)."""
    n = images.shape[0]
    padded = torch.nn.functional.pad(images, [max_shift] * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=rng)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=rng)
    h, w = images.shape[-2:]
    rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1).expand(n, images.shape[1], h, w + 2 * max_shift)
    cropped = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w)).view(n, 1, 1, w).expand(n, images.shape[1], h, w)
    return cropped.gather(3, cols)


def train_classifier(cfg: ClassifierConfig, train: DigitsSplit, progress: bool = True) -> DigitClassifier:
    """Adam with cosine decay, random 1-pixel shifts as augmentation. Returns the classifier in eval mode."""
    from senseflow.progress import bar as tqdm  # plain lines when not on a terminal

    rng = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # init and dropout masks
        model = DigitClassifier(cfg.feature_dim)
        steps_per_epoch = (len(train) + cfg.batch_size - 1) // cfg.batch_size
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs * steps_per_epoch)
        model.train()
        bar = tqdm(range(cfg.epochs), desc="classifier", disable=not progress, dynamic_ncols=True)
        for _ in bar:
            perm = torch.randperm(len(train), generator=rng)
            total = 0.0
            for i in range(0, len(train), cfg.batch_size):
                idx = perm[i:i + cfg.batch_size]
                x = random_shift(train.images[idx], rng)
                loss = torch.nn.functional.cross_entropy(model(x), train.labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{total / len(train):.4f}")
        bar.close()
    return model.eval()
