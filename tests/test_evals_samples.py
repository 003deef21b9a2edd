"""Sample sets, batched generation with resume, prompt loaders, metric helpers."""

import json

import numpy as np
import pytest

from evals import metrics as M
from evals.metric import MetricResult, bootstrap_interval, mean_interval
from evals.sample_set import SampleSet
from evals.samples import generate_samples, load_coco_captions, load_prompts


class FakeGenerator:
    """uint8 (B, 8, 8, 3) images that depend only on (prompt, seed); counts what it was asked for."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, seeds):
        self.calls.append((list(prompts), list(seeds)))
        out = []
        for p, s in zip(prompts, seeds):
            rng = np.random.default_rng([s, len(p)])
            out.append(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        return np.stack(out)


def test_generate_writes_pngs_manifest_and_resumes(tmp_path):
    prompts = [f"a digit {i}" for i in range(7)]
    gen = FakeGenerator()
    s = generate_samples(gen, prompts, 100, tmp_path / "out", batch_size=3, model="teacher", steps=28,
                         sampler="euler", progress=False)
    assert [len(p) for p, _ in gen.calls] == [3, 3, 1]
    assert len(s) == 7 and s[2].key == ("a digit 2", 102) and s[2].model == "teacher" and s[2].steps == 28
    lines = [json.loads(ln) for ln in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert lines[0] == {"file": "000000.png", "prompt": "a digit 0", "seed": 100, "model": "teacher", "steps": 28,
                        "sampler": "euler"}
    loaded = SampleSet.load(tmp_path / "out")
    assert [x.key for x in loaded] == [x.key for x in s]
    np.testing.assert_array_equal(loaded.image(4), gen(["a digit 4"], [104])[0])

    # interrupted run: drop two images and a half-written manifest line, then resume
    (tmp_path / "out" / "000005.png").unlink()
    (tmp_path / "out" / "000006.png").unlink()
    with open(tmp_path / "out" / "manifest.jsonl", "a") as fh:
        fh.write('{"file": "0000')
    gen2 = FakeGenerator()
    with pytest.warns(UserWarning, match="unreadable manifest line"):
        s2 = generate_samples(gen2, prompts, 100, tmp_path / "out", batch_size=4, progress=False)
    assert gen2.calls == [(["a digit 5", "a digit 6"], [105, 106])]
    assert [x.key for x in s2] == [x.key for x in s]
    with pytest.warns(UserWarning, match="unreadable manifest line"):  # the torn line stays, the new ones are intact
        assert [x.key for x in SampleSet.load(tmp_path / "out")] == [x.key for x in s]

    with pytest.raises(ValueError, match="is for"), pytest.warns(UserWarning):
        generate_samples(gen2, prompts, 0, tmp_path / "out", progress=False)
    bad = lambda p, s: np.zeros((len(p), 8, 8, 3), dtype=np.float32)  # noqa: E731
    with pytest.raises(TypeError, match="uint8"):
        generate_samples(bad, prompts, 0, tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="seeds"):
        generate_samples(gen, prompts, [1, 2], tmp_path / "x", progress=False)


def test_sample_set_without_manifest_and_pairing(tmp_path):
    from PIL import Image

    (tmp_path / "real" / "sub").mkdir(parents=True)
    for i, name in enumerate(["b.png", "a.jpg", "sub/c.png"]):
        Image.fromarray(np.full((5, 6, 3), i * 50, np.uint8)).save(tmp_path / "real" / name)
    (tmp_path / "real" / "notes.txt").write_text("x")
    real = SampleSet.load(tmp_path / "real")
    assert [s.file for s in real] == ["a.jpg", "b.png", "sub/c.png"] and real[0].prompt is None
    assert real.image(1).shape == (5, 6, 3)
    with pytest.raises(ValueError, match="needs a prompt and a seed"):
        real.pair_with(real)
    a = SampleSet.from_arrays(tmp_path / "a", np.zeros((2, 4, 4, 1), np.uint8), ["p", "p"], [1, 1])
    with pytest.raises(ValueError, match="appears twice"):
        a.pair_with(a)
    with pytest.raises(FileNotFoundError):
        SampleSet.load(tmp_path / "none")


def test_prompt_loaders(tmp_path):
    (tmp_path / "p.txt").write_text("  a cat \n\nA DOG\n# not a comment, a prompt\n")
    assert load_prompts(tmp_path / "p.txt") == ["a cat", "A DOG", "# not a comment, a prompt"]
    assert load_prompts(tmp_path / "p.txt", limit=1) == ["a cat"]
    coco = {"annotations": [
        {"image_id": 9, "caption": "A  dog\n running."}, {"image_id": 2, "caption": "first of two"},
        {"image_id": 2, "caption": "second of two"}, {"image_id": 5, "caption": "only"}, {"bad": 1}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    with pytest.warns(UserWarning, match="malformed"):
        caps = load_coco_captions(tmp_path / "c.json")
    assert caps == ["first of two", "only", "A dog running."]
    with pytest.warns(UserWarning):
        assert load_coco_captions(tmp_path / "c.json", limit=2, return_ids=True) == [(2, "first of two"), (5, "only")]
    with pytest.warns(UserWarning):
        longest = load_coco_captions(tmp_path / "c.json", select=lambda cs: int(np.argmax([len(c) for c in cs])))
    assert longest[0] == "second of two"
    with pytest.warns(UserWarning):
        r1 = load_coco_captions(tmp_path / "c.json", select="random", shuffle_seed=0)
    with pytest.warns(UserWarning):
        assert load_coco_captions(tmp_path / "c.json", select="random", shuffle_seed=0) == r1
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(ValueError, match="COCO"):
        load_coco_captions(tmp_path / "x.json")


def test_intervals_directions_and_flatten():
    m, lo, hi = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and hi - m == pytest.approx(1.96 * np.std([1, 2, 3, 4], ddof=1) / 2)
    assert mean_interval([5.0]) == (5.0, 5.0, 5.0)
    rng_stat = lambda rng: float(rng.normal())  # noqa: E731
    assert bootstrap_interval(rng_stat, 50, seed=1) == bootstrap_interval(rng_stat, 50, seed=1)
    assert bootstrap_interval(rng_stat, 1) is None
    for name, up in [("fid", False), ("fid_t", False), ("patch_fid_t", False), ("kid", False), ("fid_t@euler", False),
                     ("clip_score", True), ("hps", True), ("pickscore", True), ("image_reward", True),
                     ("loss_dmd", False), ("prompt_accuracy", True), ("something_new", True)]:
        assert M.higher_is_better(name) is up, name
    r1 = MetricResult({"fid": 3.0}, {"fid": (2.0, 4.0)}, num_samples=10)
    r2 = MetricResult({"clip_score": 0.3}, {"clip_score": (0.29, 0.31)}, num_samples=10)
    assert M.flatten_results({"fid": r1, "clip_score": r2}) == (
        {"fid": 3.0, "clip_score": 0.3}, {"fid": [2.0, 4.0], "clip_score": [0.29, 0.31]}, 10)


def test_build_metrics_tiny_end_to_end(tmp_path):
    """Config names -> metric objects -> evaluate -> flatten -> record_eval: the path a run takes."""
    from evals import store

    rng = np.random.default_rng(0)
    teacher = SampleSet.from_arrays(tmp_path / "t", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
                                    [f"p{i}" for i in range(8)], list(range(8)))
    student = SampleSet.from_arrays(tmp_path / "s", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
                                    [f"p{i}" for i in range(8)], list(range(8)))
    ms = M.build_metrics(["fid_t", "patch_fid_t", "kid"], tiny=True,
                         options={"patch_fid_t": {"crop_size": 16, "n_bootstrap": 0}, "fid_t": {"n_bootstrap": 3}})
    assert ms[0].cache is ms[1].cache is ms[2].cache and ms[1].crop.size == 16
    res = M.evaluate(ms, student, teacher)
    values, intervals, n = M.flatten_results(res)
    assert set(values) == {"fid_t", "patch_fid_t", "kid"} and set(intervals) == {"fid_t", "kid"} and n == 8
    run = tmp_path / "runs" / "g" / "r"
    store.record_eval(run, iteration=10, label="final", metrics=values, intervals=intervals, num_samples=n)
    assert store.read_evals(run)[0]["metrics"] == values
    with pytest.raises(ValueError, match="unknown metric"):
        M.build_metrics(["fid_t", "prompt_accuracy"])
    with pytest.warns(UserWarning, match="needs a reference"):
        assert M.evaluate(ms[:1], student) == {}
