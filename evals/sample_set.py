"""The on-disk sample set: a folder of PNG files plus ``manifest.jsonl``.

One JSON object per image: ``{"file", "prompt", "seed", "model", "steps", "sampler", ...}``. A folder
without a manifest (e.g. real COCO photos) loads too, with unknown prompts and seeds. This module imports
neither torch nor any model library.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from senseflow.run_folder import save_png  # the one PNG writer (re-exported for the sample sets)

__all__ = ["Sample", "SampleSet", "MANIFEST", "IMAGE_EXTENSIONS", "read_manifest", "save_png"]

MANIFEST = "manifest.jsonl"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class Sample:
    """One image of a `SampleSet`: ``file`` is relative to the set's folder; ``key`` = (prompt, seed)."""

    file: str
    prompt: str | None = None
    seed: int | None = None
    model: str | None = None
    steps: int | None = None
    sampler: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str | None, int | None]:
        return (self.prompt, self.seed)

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        d.update(dict(self.extra))
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Sample":
        known = {"file", "prompt", "seed", "model", "steps", "sampler"}
        seed = d.get("seed")
        steps = d.get("steps")
        return cls(file=str(d["file"]), prompt=d.get("prompt"), seed=None if seed is None else int(seed),
                   model=d.get("model"), steps=None if steps is None else int(steps), sampler=d.get("sampler"),
                   extra={k: v for k, v in d.items() if k not in known})


def read_manifest(path: Path) -> list[Sample]:
    """Parse a manifest.jsonl; a broken line (e.g. half-written) is skipped with a warning; a later
    line for the same file replaces an earlier one (resumed generation)."""
    by_file: dict[str, Sample] = {}
    with open(path, "r", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                s = Sample.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError) as e:
                warnings.warn(f"{path}:{n}: skipping unreadable manifest line ({e})", stacklevel=2)
                continue
            by_file[s.file] = s
    return list(by_file.values())


class SampleSet:
    """A folder of images with their prompts and seeds.

    ``SampleSet.load(root)`` reads ``root/manifest.jsonl`` (entries whose file is missing are dropped
    with a warning) or, without a manifest, every image file under ``root`` (sorted, no prompts).
    Images are returned as uint8 arrays of shape (H, W, 3).
    """

    def __init__(self, root: str | os.PathLike, samples: Sequence[Sample]):
        self.root = Path(root)
        self.samples: list[Sample] = list(samples)

    # -- construction
    @classmethod
    def load(cls, root: str | os.PathLike) -> "SampleSet":
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"sample folder {root} does not exist")
        man = root / MANIFEST
        if man.is_file():
            samples = read_manifest(man)
            present = [s for s in samples if (root / s.file).is_file()]
            if len(present) < len(samples):
                warnings.warn(f"{root}: {len(samples) - len(present)} manifest entries have no image file; "
                              "they are ignored", stacklevel=2)
            return cls(root, present)
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        return cls(root, [Sample(file=str(p.relative_to(root))) for p in files])

    @classmethod
    def from_arrays(cls, root: str | os.PathLike, images: np.ndarray | Sequence[np.ndarray],
                    prompts: Sequence[str] | None = None, seeds: Sequence[int] | None = None, *,
                    model: str | None = None, steps: int | None = None, sampler: str | None = None,
                    start_index: int = 0) -> "SampleSet":
        """Write uint8 images (N, H, W, C) (C = 1 or 3) as PNGs plus a manifest and return the set."""
        from .store import append_jsonl  # local import: store has no heavy dependencies

        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        n = len(images)
        prompts = list(prompts) if prompts is not None else [None] * n
        seeds = list(seeds) if seeds is not None else [None] * n
        if not (len(prompts) == len(seeds) == n):
            raise ValueError(f"got {n} images, {len(prompts)} prompts and {len(seeds)} seeds")
        out = []
        for i in range(n):
            s = Sample(file=f"{start_index + i:06d}.png", prompt=prompts[i],
                       seed=None if seeds[i] is None else int(seeds[i]), model=model, steps=steps, sampler=sampler)
            save_png(root / s.file, images[i])
            append_jsonl(root / MANIFEST, s.to_json())
            out.append(s)
        return cls(root, out)

    # -- access
    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    def __repr__(self) -> str:
        return f"SampleSet({str(self.root)!r}, n={len(self)})"

    @property
    def paths(self) -> list[Path]:
        """Absolute image paths, in set order."""
        return [self.root / s.file for s in self.samples]

    @property
    def prompts(self) -> list[str | None]:
        return [s.prompt for s in self.samples]

    def image(self, i: int) -> np.ndarray:
        """Image i as uint8 (H, W, 3)."""
        from PIL import Image

        with Image.open(self.root / self.samples[i].file) as im:
            return np.asarray(im.convert("RGB"))

    def images(self, indices: Iterable[int] | None = None) -> list[np.ndarray]:
        """uint8 (H, W, 3) arrays for ``indices`` (default: all)."""
        idx = range(len(self)) if indices is None else indices
        return [self.image(i) for i in idx]

    def subset(self, indices: Sequence[int]) -> "SampleSet":
        return SampleSet(self.root, [self.samples[i] for i in indices])

    def pair_with(self, other: "SampleSet") -> tuple[list[int], list[int]]:
        """Indices (mine, other's) of samples with the same (prompt, seed), in my order.

        Raises ValueError when either set lacks prompts/seeds, keys repeat, or nothing matches; warns
        when only part of this set has a partner.
        """
        for name, ss in (("samples", self), ("reference", other)):
            if any(s.prompt is None or s.seed is None for s in ss.samples):
                raise ValueError(f"{name} {ss.root}: pairing needs a prompt and a seed for every image (manifest.jsonl)")
        theirs: dict[tuple, int] = {}
        for j, s in enumerate(other.samples):
            if s.key in theirs:
                raise ValueError(f"reference {other.root}: (prompt, seed) {s.key!r} appears twice")
            theirs[s.key] = j
        mine, their_idx, seen = [], [], set()
        for i, s in enumerate(self.samples):
            if s.key in seen:
                raise ValueError(f"samples {self.root}: (prompt, seed) {s.key!r} appears twice")
            seen.add(s.key)
            if s.key in theirs:
                mine.append(i)
                their_idx.append(theirs[s.key])
        if not mine:
            raise ValueError(f"no (prompt, seed) pair of {self.root} is in {other.root}")
        if len(mine) < len(self):
            warnings.warn(f"{len(self) - len(mine)} of {len(self)} samples in {self.root} have no teacher sample "
                          f"in {other.root}; they are left out", stacklevel=2)
        return mine, their_idx
