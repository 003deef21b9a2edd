"""Batched sample generation into a `SampleSet` folder, and prompt-set loaders.

``generate_samples(generate, prompts, seeds, out_dir)`` calls
``generate(prompts: list[str], seeds: list[int]) -> uint8 (B, H, W, C)`` batch by batch, writes
``000000.png, 000001.png, ...`` and one manifest.jsonl line per image
(``{"file", "prompt", "seed", "model", "steps", "sampler"}``), with a progress bar. An interrupted
run resumes: images already listed in the manifest are not generated again.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .sample_set import MANIFEST, Sample, SampleSet, read_manifest, save_png
from .store import append_jsonl

__all__ = ["generate_samples", "load_prompts", "load_coco_captions", "GenerateFn"]

GenerateFn = Callable[[list[str], list[int]], Any]


def _to_uint8_batch(out: Any, n: int) -> np.ndarray:
    if hasattr(out, "detach"):  # torch tensor
        out = out.detach().cpu().numpy()
    a = np.asarray(out)
    if a.dtype != np.uint8:
        raise TypeError(f"generate() must return uint8 images (B, H, W, C), got dtype {a.dtype}")
    if a.ndim != 4 or a.shape[0] != n or a.shape[3] not in (1, 3):
        raise ValueError(f"generate() must return shape ({n}, H, W, 1 or 3), got {a.shape}")
    return a


def generate_samples(generate: GenerateFn, prompts: Sequence[str], seeds: Sequence[int] | int = 0,
                     out_dir: str | os.PathLike = "samples", *, batch_size: int = 8, model: str | None = None,
                     steps: int | None = None, sampler: str | None = None, progress: bool = True,
                     overwrite: bool = False) -> SampleSet:
    """Generate one image per (prompt, seed) into ``out_dir`` and return the `SampleSet`.

    ``seeds``: one per prompt, or an int ``s`` meaning seeds ``s, s+1, ...``. Image i is written as
    ``{i:06d}.png``. With ``overwrite=False`` an existing folder is resumed: entries already in its
    manifest (same index, prompt and seed, file present) are kept and not regenerated; a mismatch
    raises. ``progress`` shows a tqdm bar.
    """
    from senseflow.progress import bar as tqdm  # plain lines when not on a terminal

    prompts = [str(p) for p in prompts]
    seeds = [int(seeds) + i for i in range(len(prompts))] if isinstance(seeds, (int, np.integer)) \
        else [int(s) for s in seeds]
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    man = out / MANIFEST
    done: dict[int, Sample] = {}
    if man.exists():
        if overwrite:
            man.unlink()
        else:
            for s in read_manifest(man):
                stem = Path(s.file).stem
                if not stem.isdigit():
                    continue
                i = int(stem)
                if i < len(prompts) and (out / s.file).is_file():
                    if (s.prompt, s.seed) != (prompts[i], seeds[i]):
                        raise ValueError(f"{out}: existing image {s.file} is for ({s.prompt!r}, {s.seed}), not "
                                         f"({prompts[i]!r}, {seeds[i]}); use another folder or overwrite=True")
                    done[i] = s
    todo = [i for i in range(len(prompts)) if i not in done]
    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), disable=not progress, desc=f"samples {out.name}",
               unit="img", dynamic_ncols=True, leave=False)
    try:
        for b in range(0, len(todo), batch_size):
            idx = todo[b:b + batch_size]
            imgs = _to_uint8_batch(generate([prompts[i] for i in idx], [seeds[i] for i in idx]), len(idx))
            for j, i in enumerate(idx):
                s = Sample(file=f"{i:06d}.png", prompt=prompts[i], seed=seeds[i], model=model, steps=steps,
                           sampler=sampler)
                save_png(out / s.file, imgs[j])
                append_jsonl(man, s.to_json())
                done[i] = s
            bar.update(len(idx))
    finally:
        bar.close()
    return SampleSet(out, [done[i] for i in range(len(prompts))])


def load_prompts(path: str | os.PathLike, limit: int | None = None) -> list[str]:
    """Prompts from a UTF-8 text file, one per line (blank lines skipped, surrounding spaces stripped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    prompts = [ln.strip() for ln in lines if ln.strip()]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts[:limit] if limit is not None else prompts


def load_coco_captions(path: str | os.PathLike, limit: int | None = None, *, select: str | Callable[[list[str]], int]
                       = "first", shuffle_seed: int | None = None, return_ids: bool = False
                       ) -> list[str] | list[tuple[int, str]]:
    """One caption per image from a COCO captions file (``captions_val2017.json``: {"annotations": [{"image_id",
    "caption"}, ...]}).

    Images are taken in increasing ``image_id`` order (or shuffled with ``shuffle_seed``), then the
    first ``limit``. ``select`` picks each image's caption: "first" (annotation order), "random"
    (seeded by the image id), or a callable ``captions -> index`` (e.g. the highest CLIP score, the
    SenseFlow COCO-5K protocol). ``return_ids`` gives (image_id, caption) pairs.
    """
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    anns = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(anns, list):
        raise ValueError(f"{path}: not a COCO captions file (no 'annotations' list)")
    by_image: dict[int, list[str]] = {}
    for a in anns:
        try:
            by_image.setdefault(int(a["image_id"]), []).append(" ".join(str(a["caption"]).split()))
        except (KeyError, TypeError, ValueError):
            warnings.warn(f"{path}: skipping malformed annotation {a!r:.80}", stacklevel=2)
    ids = sorted(by_image)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(ids)
    if limit is not None:
        ids = ids[:limit]
    out = []
    for i in ids:
        caps = by_image[i]
        if select == "first":
            k = 0
        elif select == "random":
            k = random.Random(i).randrange(len(caps))
        elif callable(select):
            k = int(select(caps))
        else:
            raise ValueError(f"select={select!r}: use 'first', 'random' or a callable")
        out.append((i, caps[k]))
    return out if return_ids else [c for _, c in out]
