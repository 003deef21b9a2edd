"""FID / KID / FID-T / patch FID-T through clean-fid with tiny random-init extractors."""

import os

import numpy as np
import pytest

from evals import fid as F
from evals.sample_set import SampleSet
from evals.weights import MissingWeightsError, resolve_weights


def _images(n, seed, shift=0.0, size=32):
    """Smooth random images (N, size, size, 3) uint8; ``shift`` moves the mean brightness."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, (n, size // 4, size // 4, 3))
    up = np.kron(base, np.ones((1, 4, 4, 1)))
    return np.clip(128 + shift + 45 * up + rng.normal(0, 10, up.shape), 0, 255).astype(np.uint8)


def _set(root, imgs, prompts=None, seeds=None):
    n = len(imgs)
    return SampleSet.from_arrays(root, imgs, prompts or [f"prompt {i}" for i in range(n)],
                                 seeds if seeds is not None else list(range(n)), model="m")


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("fid")
    return {
        "a": _set(d / "a", _images(64, 0)),
        "b": _set(d / "b", _images(64, 1)),            # same distribution, other draw
        "near": _set(d / "near", _images(64, 2, shift=12)),
        "far": _set(d / "far", _images(64, 3, shift=40)),
    }


@pytest.fixture(scope="module")
def ex():
    return F.tiny_extractor(dim=16, seed=0)


def test_fid_self_zero_and_grows_with_shift(sets, ex):
    m = F.FID(ex, n_bootstrap=10, seed=0)
    same = m.compute(sets["a"], sets["a"])["fid"]
    other = m.compute(sets["a"], sets["b"])["fid"]
    near = m.compute(sets["a"], sets["near"])
    far = m.compute(sets["a"], sets["far"])
    assert abs(same) < 1e-6 * far["fid"]
    assert other < near["fid"] < far["fid"]
    lo, hi = far.intervals["fid"]
    assert np.isfinite([lo, hi]).all() and lo < hi and lo > near["fid"]
    assert far.num_samples == 64
    # deterministic, including the bootstrap
    again = F.FID(ex, n_bootstrap=10, seed=0).compute(sets["a"], sets["far"])
    assert again == far and again.intervals == far.intervals
    # the features are clean-fid's and the value clean-fid's math
    from cleanfid import fid as cf

    fa = ex.features_from_files(sets["a"].paths)
    ff = ex.features_from_files(sets["far"].paths)
    assert far["fid"] == pytest.approx(cf.fid_from_feats(fa.astype(np.float64), ff.astype(np.float64)), rel=1e-9)


def test_kid_unbiased_near_zero_and_deterministic(sets, ex):
    k = F.KID(ex, n_bootstrap=8, seed=3, num_subsets=50)
    same = k.compute(sets["a"], sets["b"])
    far = k.compute(sets["a"], sets["far"])
    assert abs(same["kid"]) < 0.05 * far["kid"]
    assert far["kid"] > 0
    lo, hi = same.intervals["kid"]
    assert lo < hi and lo < 0.05 * far["kid"]
    assert F.KID(ex, n_bootstrap=8, seed=3, num_subsets=50).compute(sets["a"], sets["b"]) == same
    assert F.KID(ex, n_bootstrap=0, seed=4, num_subsets=50).compute(sets["a"], sets["b"])["kid"] != same["kid"]
    state = np.random.get_state()[1].copy()
    F.kid_from_features(np.ones((4, 2)), np.zeros((4, 2)), seed=1)
    assert (np.random.get_state()[1] == state).all()  # global numpy RNG untouched


def test_fid_t_pairs_by_prompt_and_seed(tmp_path, sets, ex):
    student = sets["a"]
    imgs = np.stack(student.images())
    # teacher: the same (prompt, seed) images in another order plus 32 unrelated far-off samples
    perm = np.random.default_rng(0).permutation(64)
    extra = _images(32, 9, shift=60)
    teacher = _set(tmp_path / "teacher", np.concatenate([imgs[perm], extra]),
                   [f"prompt {i}" for i in perm] + [f"other {i}" for i in range(32)],
                   [int(i) for i in perm] + list(range(32)))
    m = F.FIDT(ex, n_bootstrap=5)
    assert abs(m.compute(student, teacher)["fid_t"]) < 1e-9          # matched pairs are identical
    assert F.FID(ex, n_bootstrap=0).compute(student, teacher)["fid"] > 1e-4  # unpaired sees the extras

    # a teacher with only half the prompts: the student's other half is left out with a warning
    with pytest.warns(UserWarning, match="no teacher sample"):
        r = F.FIDT(ex, n_bootstrap=0).compute(student, sets["b"].subset(range(0, 64, 2)))
    assert r.num_samples == 32
    # same prompts, other seeds: nothing matches
    shifted = _set(tmp_path / "other_seeds", imgs[:8], [f"prompt {i}" for i in range(8)], list(range(100, 108)))
    with pytest.raises(ValueError, match="no \\(prompt, seed\\) pair"):
        F.FIDT(ex).compute(shifted, teacher)
    # FID-T equals FID over features taken in paired order
    r1 = F.FIDT(ex, n_bootstrap=4, seed=1).compute(sets["near"], sets["a"])
    assert r1["fid_t"] == pytest.approx(F.fid_from_features(ex.features_from_files(sets["near"].paths),
                                                             ex.features_from_files(sets["a"].paths)))
    assert r1.intervals == F.FIDT(ex, n_bootstrap=4, seed=1).compute(sets["near"], sets["a"]).intervals


def test_patch_fid_t_crops_at_full_resolution(tmp_path):
    spec = F.CropSpec(40, "grid")
    assert spec.positions(100, 100) == [(t, l) for t in (0, 30, 60) for l in (0, 30, 60)]
    assert spec.positions(40, 80) == [(0, 0), (0, 40)]
    assert F.CropSpec(40, "center").positions(100, 60) == [(30, 10)]
    with pytest.raises(ValueError, match="larger than the image"):
        spec.positions(32, 100)

    seen = []

    class Recorder:
        def __call__(self, x):
            seen.append(tuple(x.shape))
            return x.mean(dim=(2, 3))  # (B, 3) mean colour

    rec = F.FeatureExtractor(Recorder(), "recorder", resize=F.no_resize, batch_size=64)
    imgs = _images(6, 5, size=100)
    imgs[:, 60:, 60:, :] = 255  # bottom-right region white: only crops reaching it see it
    s = _set(tmp_path / "s", imgs)
    t = _set(tmp_path / "t", _images(6, 6, size=100))
    feats = F.FeatureCache().features(rec, s.paths, spec)
    assert feats.shape == (6, 9, 3)
    assert set(seen) == {(6, 3, 40, 40)}  # crops go to the extractor at full resolution, unresized
    np.testing.assert_allclose(feats[:, 8], 255.0)  # the last grid crop is the white corner
    np.testing.assert_allclose(feats[0, 0], imgs[0, :40, :40].reshape(-1, 3).mean(0), rtol=1e-5)

    ex = F.tiny_extractor(dim=8)
    p = F.PatchFIDT(ex, crop_size=40, n_bootstrap=4)
    assert abs(p.compute(s, s)["patch_fid_t"]) < 1e-9
    r = p.compute(s, t)
    assert r["patch_fid_t"] > 0 and r.num_samples == 6 and len(r.intervals["patch_fid_t"]) == 2
    with pytest.raises(ValueError, match="larger than the image"):
        F.PatchFIDT(ex, crop_size=128).compute(s, t)


def test_arrays_match_files_and_random_inception(sets, ex):
    a = sets["a"]
    np.testing.assert_allclose(ex.features_from_arrays(np.stack(a.images()[:8])),
                               ex.features_from_files(a.paths[:8]), rtol=1e-5, atol=1e-6)
    inc = F.random_inception_extractor(seed=0)
    f = inc.features_from_files(a.paths[:1])  # clean-fid's bicubic resize to 299, 2048-d pool features
    assert f.shape == (1, 2048) and np.isfinite(f).all() and f.std() > 0


def test_missing_inception_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SENSEFLOW_WEIGHTS_DIR", str(tmp_path / "nothing"))
    monkeypatch.delenv("SENSEFLOW_INCEPTION_WEIGHTS", raising=False)
    if os.path.exists("/tmp/inception-2015-12-05.pt"):
        pytest.skip("clean-fid's cached Inception weights are present on this machine")
    with pytest.raises(MissingWeightsError) as e:
        F.FID()
    msg = str(e.value)
    for part in ("inception-2015-12-05.pt", "eval.weights.inception", "SENSEFLOW_INCEPTION_WEIGHTS", "offline"):
        assert part in msg
    assert e.value.filename == "inception-2015-12-05.pt"
    with pytest.raises(MissingWeightsError, match="does not exist"):
        F.inception_extractor(tmp_path / "inception.pt")
    monkeypatch.setenv("SENSEFLOW_INCEPTION_WEIGHTS", str(tmp_path / "gone.pt"))
    with pytest.raises(MissingWeightsError, match="SENSEFLOW_INCEPTION_WEIGHTS"):
        F.PatchFIDT()
    # a file that is there is found through the variable or the shared folder
    (tmp_path / "w").mkdir()
    f = tmp_path / "w" / "inception-2015-12-05.pt"
    f.write_bytes(b"x")
    monkeypatch.setenv("SENSEFLOW_INCEPTION_WEIGHTS", str(f))
    assert resolve_weights("inception") == f
    monkeypatch.delenv("SENSEFLOW_INCEPTION_WEIGHTS")
    monkeypatch.setenv("SENSEFLOW_WEIGHTS_DIR", str(tmp_path / "w"))
    assert resolve_weights("inception") == f
