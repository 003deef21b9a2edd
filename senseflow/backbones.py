"""What is known about a discriminator backbone before it is loaded: its depth (number of ViT blocks).

The config checks `gan.layers` against it when the config is built, so a layer beyond the backbone fails
as one line naming the key, not minutes later when the discriminator is constructed. The depth comes from
the name of a DINOv2 checkpoint, from a local directory's (or the local Hugging Face cache's) config.json,
or from the embedded worlds; for anything else it is unknown and the discriminator checks it on loading.
Nothing here imports torch or downloads anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# DINOv2 ViT-S/14, B/14, L/14, g/14 (with or without registers)
_DINOV2_DEPTHS = {"small": 12, "base": 12, "large": 24, "giant": 40}
TINY_DEPTH = 4  # senseflow.discriminators.tiny_dinov2's default (backbone "tiny-random", and model.tiny runs)
DIGITS_VIT_DEPTH = 4  # the digits world's backbone ("digits-vit"): its config's backbone.num_hidden_layers default


def _config_depth(folder: Path) -> int | None:
    try:
        value = json.loads((folder / "config.json").read_text()).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def backbone_depth(name: str) -> int | None:
    """Blocks of the backbone `name` (gan.backbone), or None when it cannot be known without loading it."""
    if name == "tiny-random":
        return TINY_DEPTH
    if name == "digits-vit":
        return DIGITS_VIT_DEPTH
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        return _config_depth(path)
    base = name.rsplit("/", 1)[-1].lower()
    if base.startswith("dinov2"):
        for size, depth in _DINOV2_DEPTHS.items():
            if f"-{size}" in base:
                return depth
    if name.count("/") == 1:  # another hub id: its config.json if the local cache holds it
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
        except Exception:  # not a valid repo id
            return None
        if isinstance(cached, str):
            return _config_depth(Path(cached).parent)
    return None
