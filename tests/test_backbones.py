"""gan.layers is checked against the backbone's depth when the config is built, where the depth is known."""

from __future__ import annotations

import json

import pytest

from senseflow.backbones import backbone_depth
from senseflow.config import ConfigError, resolve


def test_known_depths(tmp_path):
    assert backbone_depth("facebook/dinov2-large") == 24 and backbone_depth("facebook/dinov2-small") == 12
    assert backbone_depth("facebook/dinov2-with-registers-giant") == 40
    assert backbone_depth("tiny-random") == 4 and backbone_depth("digits-vit") == 4
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 6}))
    assert backbone_depth(str(tmp_path)) == 6
    assert backbone_depth(str(tmp_path / "missing")) is None and backbone_depth("someone/unknown-vit") is None


def test_layers_beyond_the_backbone_fail_when_the_config_is_built(tmp_path):
    with pytest.raises(ConfigError, match=r"gan.layers=\[2, 5, 8, 10, 14, 19, 23\]: gan.backbone='facebook/dinov2-small' "
                                          r"has 12 blocks"):
        resolve("sd35-large-senseflow", ["gan.backbone=facebook/dinov2-small"])
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 6}))
    with pytest.raises(ConfigError, match="has 6 blocks"):
        resolve("sd35-large-senseflow", [f"gan.backbone={tmp_path}", "gan.layers=[1, 6]"])
    assert resolve("sd35-large-senseflow", [f"gan.backbone={tmp_path}", "gan.layers=[1, -1]"]).gan.layers == [1, -1]
    assert resolve("sd35-large-senseflow", ["gan.backbone=someone/unknown-vit"]).gan.layers  # unknown: checked on load
