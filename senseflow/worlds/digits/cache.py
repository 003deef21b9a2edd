"""Is a digits world completely cached? A check that imports neither torch nor diffusers.

`build_world` on a complete cache loads every artifact (torch, diffusers, transformers: seconds) only to
find that nothing needs building. `cached_manifest` answers the same question from the files alone, so
`senseflow world digits build` on a built world prints its figures in well under a second and loads no model.

It checks every file `build_world(cfg)` (figures and grids on) would load or test for, as `world._Builder` does:

    config.json                       present, valid JSON, its "hash" equal to cfg.config_hash()
    data.safetensors                  train_images, train_labels, held_out_images, held_out_labels
    text_cache.safetensors            states, pooled; metadata text_length == cfg.text.text_length and prompts
                                      covering every world prompt (else MiniLM would run)
    classifier.safetensors            a state dict
    backbone/config.json, model.safetensors                       (Dinov2Model.from_pretrained)
    teacher/config.json, diffusion_pytorch_model.safetensors      (SD3Transformer2DModel.from_pretrained)
    reference / floor / baseline.safetensors   labels, noise, samples; metadata prompts and sigmas
    figures.json                      valid JSON object
    samples/overview.png, samples/digit_<0..9>.png

Each .safetensors file must also be whole: its header parses and the file is exactly as long as the header
says (what a truncated or half-copied file would fail). The tensors' values are not read; a file that is
complete but wrong is `build_world`'s to find, as it was before. Anything missing -> None, and the caller
runs the full `build_world`, which builds what is missing.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from senseflow.worlds.digits.config import DigitsWorldConfig
from senseflow.worlds.digits.prompts import all_prompts

# file -> tensors it must hold (safetensors) ; the metadata checks are in `_problems`
SAFETENSORS = {
    "data.safetensors": ("train_images", "train_labels", "held_out_images", "held_out_labels"),
    "text_cache.safetensors": ("states", "pooled"),
    "classifier.safetensors": (),
    "backbone/model.safetensors": (),
    "teacher/diffusion_pytorch_model.safetensors": (),
    "reference.safetensors": ("labels", "noise", "samples"),
    "floor.safetensors": ("labels", "noise", "samples"),
    "baseline.safetensors": ("labels", "noise", "samples"),
}
JSON_FILES = ("config.json", "backbone/config.json", "teacher/config.json", "figures.json")
GRID_FILES = tuple(f"samples/digit_{d}.png" for d in range(10)) + ("samples/overview.png",)


@dataclass
class CachedWorld:
    """A completely cached world: its directory, its figures (figures.json) and the files checked."""

    directory: Path
    figures: dict
    files: list[str] = field(default_factory=list)

    def grid_paths(self) -> list[Path]:
        return [self.directory / f for f in GRID_FILES]


def expected_files() -> list[str]:
    """Every file (relative to the world directory) a complete cache holds, in a fixed order."""
    return list(JSON_FILES) + list(SAFETENSORS) + list(GRID_FILES)


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file (tensor entries and "__metadata__"); ValueError if the file is
    not whole (short header, bad JSON, or a length other than header + data)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise ValueError("header longer than the file")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if size != 8 + n + max(ends, default=0):
        raise ValueError(f"{size} bytes, the header describes {8 + n + max(ends, default=0)}")
    return header


def _problems(cfg: DigitsWorldConfig, directory: Path, stop_at_first: bool = True) -> list[str]:
    problems: list[str] = []

    def bad(msg: str) -> bool:
        problems.append(msg)
        return stop_at_first

    if not directory.is_dir():
        return [f"{directory} does not exist"]
    missing = [f for f in expected_files() if not os.path.isfile(directory / f)]
    for f in missing:
        if bad(f"{f} is missing"):
            return problems
    jsons: dict[str, object] = {}
    for f in JSON_FILES:
        if f in missing:
            continue
        try:
            jsons[f] = json.loads((directory / f).read_text())
        except (OSError, ValueError) as e:
            if bad(f"{f} is not valid JSON ({e})"):
                return problems
    stored = jsons.get("config.json")
    if isinstance(stored, dict) and stored.get("hash") != cfg.config_hash():
        if bad(f"config.json names hash {stored.get('hash')!r}, the config hashes to {cfg.config_hash()}"):
            return problems
    if "figures.json" in jsons and not isinstance(jsons["figures.json"], dict):
        if bad("figures.json is not a JSON object"):
            return problems
    for f, tensors in SAFETENSORS.items():
        if f in missing:
            continue
        try:
            header = read_safetensors_header(directory / f)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            if bad(f"{f} is not a whole safetensors file ({e})"):
                return problems
            continue
        absent = [t for t in tensors if t not in header]
        if absent and bad(f"{f} lacks tensors {absent}"):
            return problems
        meta = header.get("__metadata__") or {}
        try:
            if f == "text_cache.safetensors":
                if int(meta["text_length"]) != cfg.text.text_length:
                    if bad(f"{f} has text_length {meta['text_length']}, the config {cfg.text.text_length}"):
                        return problems
                uncached = set(all_prompts()) - set(json.loads(meta["prompts"]))
                if uncached and bad(f"{f} lacks {len(uncached)} prompt(s), e.g. {sorted(uncached)[0]!r}"):
                    return problems
            elif tensors and tensors[-1] == "samples":
                json.loads(meta["prompts"]), json.loads(meta["sigmas"])
        except (KeyError, ValueError, TypeError) as e:
            if bad(f"{f} has unreadable metadata ({e!r})"):
                return problems
    return problems


def cache_problems(cfg: DigitsWorldConfig, cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Everything that keeps the world of `cfg` from being completely cached ([] when it is)."""
    return _problems(cfg, cfg.cache_dir(cache_dir), stop_at_first=False)


def cached_manifest(cfg: DigitsWorldConfig, cache_dir: str | os.PathLike | None = None) -> CachedWorld | None:
    """The cached world of `cfg` (directory, figures, files checked) when every artifact `build_world` would
    load is present and whole; None otherwise (then `build_world` has something to build)."""
    directory = cfg.cache_dir(cache_dir)
    if _problems(cfg, directory, stop_at_first=True):
        return None
    figures = json.loads((directory / "figures.json").read_text())
    return CachedWorld(directory, figures, expected_files())
