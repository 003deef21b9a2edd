"""Per-image text-image scores (CLIP score, HPS, PickScore, ImageReward) on tiny random-init models
of the real architecture families; checkpoint loading paths; one clear error when weights are missing."""

import numpy as np
import pytest
import torch

from evals import metrics as M
from evals import weights as W
from evals.metric import mean_interval
from evals.sample_set import SampleSet
from evals.weights import MissingWeightsError

PROMPTS = ["a red cube on a table", "a handwritten seven", "a photo of a cat wearing a hat", "sunset"]


def _imgs(seed=0, n=4):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def sample_set(tmp_path_factory):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (6, 48, 48, 3), dtype=np.uint8)
    return SampleSet.from_arrays(tmp_path_factory.mktemp("s") / "set", imgs, (PROMPTS * 2)[:6], list(range(6)))


def _clip(seed=0, **kw):
    from evals.clip_score import ClipScore

    return ClipScore(tiny=True, seed=seed, scale=100.0, **kw)


def _hps(seed=0, **kw):
    from evals.hps import HPSv2

    return HPSv2(tiny=True, seed=seed, **kw)


def _pick(seed=0, **kw):
    from evals.pickscore import PickScore

    return PickScore(tiny=True, seed=seed, **kw)


def _ir(seed=0, **kw):
    from evals.image_reward import ImageRewardScore

    return ImageRewardScore(tiny=True, seed=seed, **kw)


BUILDERS = {"clip_score": _clip, "hps": _hps, "pickscore": _pick, "image_reward": _ir}


@pytest.fixture(scope="module")
def models():
    return {name: b() for name, b in BUILDERS.items()}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_score_deterministic_batched_and_compute(name, models, sample_set):
    m = models[name]
    imgs = _imgs()
    s = m.score(imgs, PROMPTS)
    assert s.shape == (4,) and s.dtype == np.float64 and np.isfinite(s).all()
    np.testing.assert_array_equal(s, m.score(imgs, PROMPTS))  # deterministic (eval mode, no dropout)
    one = np.concatenate([m.score([i], [p]) for i, p in zip(imgs, PROMPTS)])
    np.testing.assert_allclose(one, s, rtol=1e-4, atol=1e-6)  # batching does not change a score
    rebuilt = BUILDERS[name](seed=0)
    np.testing.assert_array_equal(rebuilt.score(imgs, PROMPTS), s)  # same seed -> same model -> same scores
    if name != "clip_score":  # (tiny CLIP cosines are mostly clipped at 0)
        assert not np.allclose(BUILDERS[name](seed=1).score(imgs, PROMPTS), s, rtol=0, atol=1e-9)

    m.batch_size = 4
    r = m.compute(sample_set)
    assert set(r) == {name} and r.num_samples == 6 and r.per_sample[name].shape == (6,)
    lo, hi = r.intervals[name]
    assert lo <= r[name] <= hi
    mean, lo2, hi2 = mean_interval(r.per_sample[name])
    assert (r[name], lo, hi) == (mean, lo2, hi2)
    assert M.higher_is_better(name)


def test_checkpoint_round_trips(tmp_path, models):
    imgs = _imgs(3)
    # HPS: {'state_dict': ...} with DDP 'module.' prefixes and fp16 values, torch.load(weights_only=True)
    h = models["hps"]
    torch.save({"state_dict": {"module." + k: v.half() for k, v in h.model.state_dict().items()}, "epoch": 3},
               tmp_path / "hps.pt")
    np.testing.assert_allclose(_hps(seed=7, checkpoint=tmp_path / "hps.pt").score(imgs, PROMPTS),
                               h.score(imgs, PROMPTS), atol=2e-3)
    torch.save({"state_dict": {"visual.proj": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit"):
        _hps(checkpoint=tmp_path / "bad.pt")
    # open_clip CLIP: a plain state dict file
    c = models["clip_score"]
    torch.save(c.model.state_dict(), tmp_path / "clip.pt")
    np.testing.assert_array_equal(_clip(seed=5, checkpoint=tmp_path / "clip.pt").score(imgs, PROMPTS),
                                  c.score(imgs, PROMPTS))
    # ImageReward: a plain state dict (like ImageReward.pt)
    r = models["image_reward"]
    torch.save(r.model.state_dict(), tmp_path / "ir.pt")
    np.testing.assert_array_equal(_ir(seed=5, checkpoint=tmp_path / "ir.pt").score(imgs, PROMPTS),
                                  r.score(imgs, PROMPTS))
    # PickScore: the real loading path (CLIPModel/AutoProcessor.from_pretrained, local files only)
    from evals.pickscore import PickScore

    p = models["pickscore"]
    p.model.save_pretrained(tmp_path / "pick_model")
    p.processor.save_pretrained(tmp_path / "pick_proc")
    loaded = PickScore(tmp_path / "pick_model", tmp_path / "pick_proc")
    np.testing.assert_allclose(loaded.score(imgs, PROMPTS), p.score(imgs, PROMPTS), rtol=1e-5)


def test_imagereward_tokenizer_is_offline_bert():
    from evals._imagereward_compat import offline_blip_tokenizer

    tok = offline_blip_tokenizer()
    assert len(tok) == 30524  # med_config vocab_size: 30522 WordPiece + [DEC] + [ENC]
    assert tok("a photo of a cat").input_ids == [101, 1037, 6302, 1997, 1037, 4937, 102]
    assert tok.enc_token_id == 30523 and tok.bos_token == "[DEC]"


MISSING = {
    "clip_score": (lambda: __import__("evals.clip_score", fromlist=["x"]).ClipScore(),
                   "open_clip_model.safetensors", "eval.weights.clip_score", "SENSEFLOW_CLIP_WEIGHTS"),
    "hps_v2.1": (lambda: __import__("evals.hps", fromlist=["x"]).HPSv2(),
                 "HPS_v2.1_compressed.pt", "eval.weights.hps", "SENSEFLOW_HPS_WEIGHTS"),
    "hps_v2": (lambda: __import__("evals.hps", fromlist=["x"]).HPSv2("v2"),
               "HPS_v2_compressed.pt", "eval.weights.hps", "SENSEFLOW_HPS_WEIGHTS"),
    "pickscore": (lambda: __import__("evals.pickscore", fromlist=["x"]).PickScore(),
                  "PickScore_v1", "eval.weights.pickscore", "SENSEFLOW_PICKSCORE_MODEL"),
    "image_reward": (lambda: __import__("evals.image_reward", fromlist=["x"]).ImageRewardScore(),
                     "ImageReward.pt", "eval.weights.image_reward", "SENSEFLOW_IMAGEREWARD_WEIGHTS"),
}


@pytest.mark.parametrize("name", list(MISSING))
def test_missing_weights_offline_one_clear_error(name, tmp_path, monkeypatch):
    build, filename, key, env = MISSING[name]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/hpsv2, ~/.cache/ImageReward
    monkeypatch.setenv("SENSEFLOW_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr(W, "_hub_cached_file", lambda repo, filename: None)
    monkeypatch.setattr(W, "resolve_hub_dir", lambda repo: None)
    with pytest.raises(MissingWeightsError) as e:
        build()
    msg = str(e.value)
    for part in (filename, key, env, "offline", "https://huggingface.co/"):
        assert part in msg, (part, msg)
    assert (e.value.filename, e.value.config_key, e.value.env_var) == (filename, key, env)
    assert "\n" not in msg and "Errno" not in msg


@pytest.mark.slow
def test_imagereward_real_architecture_matches_package():
    """The real ViT-L + BERT-base ImageReward (random weights, ~30 s on one core): our batched score equals
    the package's own one-image ImageReward.score through the transformers-5 compatibility layer."""
    from PIL import Image

    from evals.image_reward import ImageRewardScore

    m = ImageRewardScore(random_init=True)
    assert sum(p.numel() for p in m.model.parameters()) > 400e6
    imgs = _imgs(5, n=2)
    ours = m.score(imgs, PROMPTS[:2])
    ref = [m.model.score(p, Image.fromarray(i)) for p, i in zip(PROMPTS[:2], imgs)]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
