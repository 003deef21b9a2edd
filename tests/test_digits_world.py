"""The digits world on a shortened schedule (DigitsWorldConfig.quick()): shapes, determinism, cache hits,
and that the classifier and teacher beat chance (10%) by a wide margin. No downloads: MiniLM ships in a package.
"""

from __future__ import annotations

import os

import pytest
import torch

from senseflow import flow
from senseflow.models.base import Conditioning, ModelBundle
from senseflow.worlds.digits import (HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, DigitsData, DigitsTextEncoder,
                                     DigitsWorldConfig, all_prompts, build_world, train_prompts)
from senseflow.worlds.digits.config import TeacherConfig
from senseflow.worlds.digits.teacher import train_teacher

QUICK = DigitsWorldConfig.quick()


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("senseflow-cache")


@pytest.fixture(scope="module")
def world(cache_root):
    return build_world(QUICK, cache_dir=cache_root, progress=False)


# ----------------------------------------------------------------------------- data and prompts
def test_data_split_is_stratified_fixed_and_in_range():
    a = DigitsData.load(0.2, 0)
    b = DigitsData.load(0.2, 0)
    assert len(a.train) + len(a.held_out) == 1797
    assert 350 <= len(a.held_out) <= 370
    assert torch.equal(a.held_out.images, b.held_out.images)
    assert a.train.images.shape[1:] == (1, 8, 8) and a.train.images.dtype == torch.float32
    assert a.train.images.min() == -1.0 and a.train.images.max() == 1.0
    assert torch.bincount(a.held_out.labels, minlength=10).min() >= 34  # every digit held out
    c = DigitsData.load(0.2, 1)
    assert not torch.equal(a.held_out.images, c.held_out.images)  # another split seed, another split


def test_held_out_templates_are_not_training_templates():
    assert not set(TRAIN_TEMPLATES) & set(HELD_OUT_TEMPLATES)
    prompts = all_prompts()
    assert prompts[0] == "" and "a handwritten seven" in prompts and "the digit 7" in prompts


# ----------------------------------------------------------------------------- text encoder
def test_text_encoder_shapes_cache_and_uncond(world):
    enc = world.text_encoder
    calls = enc.minilm_calls
    c = enc.encode(["a handwritten seven", "the digit 7", ""])
    assert isinstance(c, Conditioning)
    assert c.prompt_embeds.shape == (3, QUICK.text.text_length, 384) and c.pooled.shape == (3, 384)
    assert torch.allclose(c.pooled.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert enc.minilm_calls == calls  # every world prompt comes from the cache, MiniLM does not run
    u = enc.uncond(4)
    assert len(u) == 4 and torch.equal(u.prompt_embeds[0], c.prompt_embeds[2])
    # the same prompt gives the same encoding whatever else is in the batch (padding is masked out)
    fresh = DigitsTextEncoder(QUICK.text.text_length)
    solo = fresh.encode(["a handwritten seven"])
    assert torch.allclose(solo.prompt_embeds[0], c.prompt_embeds[0], atol=1e-5)
    assert torch.allclose(solo.pooled[0], c.pooled[0], atol=1e-5)


def test_text_encoder_rejects_prompts_longer_than_text_length():
    with pytest.raises(ValueError, match="text_length"):
        DigitsTextEncoder(4).encode(["a very long prompt about the handwritten number seven"])


# ----------------------------------------------------------------------------- the world object
def test_world_bundle_and_shapes(world):
    b = world.bundle
    assert isinstance(b, ModelBundle) and b.family == "digits" and b.latent_shape == (1, 8, 8)
    assert b.image_channels == 1 and len(b.sigma_table) == 1000 and float(b.sigma_table[-1]) == 1.0
    assert world.anchors == [float(b.sigma_table[i]) for i in QUICK.sampling.anchor_indices]
    assert world.anchors[0] == 1.0 and world.anchors == sorted(world.anchors, reverse=True)
    x = torch.randn(5, 1, 8, 8)
    sigma = torch.rand(5)
    v = b.teacher(x, sigma, world.encode(["a handwritten seven"] * 5))
    assert v.shape == x.shape and torch.isfinite(v).all()
    assert b.codec.decode(b.codec.encode(x)) is x
    r = world.reference
    assert r.samples.shape == (QUICK.reference.num_samples, 1, 8, 8) == r.noise.shape
    assert len(r.prompts) == len(r.labels) == QUICK.reference.num_samples
    training_prompts = {p for d in range(10) for p in train_prompts(d)}
    assert set(r.prompts) <= set(all_prompts()) and not set(r.prompts) & training_prompts  # held-out templates
    assert not torch.equal(world.floor.noise, r.noise) and world.floor.prompts == r.prompts
    assert torch.equal(world.baseline.noise, r.noise) and world.baseline.sigmas == world.anchors + [0.0]
    assert (world.backbone_dir / "config.json").exists() and (world.backbone_dir / "model.safetensors").exists()


def test_sample_batch_is_deterministic_under_a_seed(world):
    a = world.sample_batch(16, torch.Generator().manual_seed(3))
    b = world.sample_batch(16, torch.Generator().manual_seed(3))
    c = world.sample_batch(16, torch.Generator().manual_seed(4))
    assert a.images.shape == (16, 1, 8, 8) and a.labels.shape == (16,) and len(a.prompts) == 16
    assert torch.equal(a.images, b.images) and a.prompts == b.prompts and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels) or a.prompts != c.prompts
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for p, d in zip(a.prompts, a.labels.tolist()):  # each prompt names its image's digit
        assert words[d] in p.split() or str(d) in p.split()
    h = world.sample_batch(8, torch.Generator().manual_seed(0), split="held_out")
    assert all(p in set(all_prompts()) for p in h.prompts)


def test_teacher_sampling_is_deterministic_and_flow_consistent(world):
    prompts = world.reference.prompts[:6]
    noise = world.reference.noise[:6]
    x1 = world.sample_teacher(prompts, noise, steps=3)
    x2 = world.sample_teacher(prompts, noise, steps=3)
    assert torch.equal(x1, x2)
    # one Euler step through the shared flow functions by hand
    cond, unc = world.encode(prompts), world.uncond()
    from senseflow.models.base import guided_velocity

    with torch.no_grad():
        v = guided_velocity(world.teacher, noise, torch.ones(6), cond, unc, QUICK.sampling.cfg_scale)
    by_hand = flow.euler_step(noise, v, 1.0, 0.0)
    assert torch.allclose(world.sample_teacher(prompts, noise, sigmas=[1.0, 0.0]), by_hand, atol=1e-5)
    # the cached baseline is the teacher at the anchors on the reference noise
    assert torch.allclose(world.sample_teacher_at_anchors(prompts, noise), world.baseline.samples[:6], atol=1e-5)


def test_teacher_training_is_deterministic_under_its_seed(world):
    cfg = TeacherConfig(steps=3, batch_size=8, warmup_steps=1)
    a, la = train_teacher(cfg, world.train, world.text_encoder, progress=False)
    b, lb = train_teacher(cfg, world.train, world.text_encoder, progress=False)
    assert la == lb
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n


# ----------------------------------------------------------------------------- quality (short schedule)
def test_classifier_beats_chance_by_a_wide_margin(world):
    acc = world.classifier.accuracy(world.held_out.images, world.held_out.labels)
    assert acc > 0.80
    f = world.classifier.features(world.held_out.images[:7])
    assert f.shape == (7, QUICK.classifier.feature_dim)
    assert world.classifier.predict(world.held_out.images[:7]).shape == (7,)


def test_teacher_samples_are_the_prompted_digit(world):
    from evals import digits as ev

    r = world.reference
    assert ev.prompt_accuracy(r.samples, r.labels, world) > 0.40
    assert world.figures["teacher"]["prompt_accuracy"] == pytest.approx(ev.prompt_accuracy(r.samples, r.labels, world))


# ----------------------------------------------------------------------------- evaluation helpers
def test_fid_helpers(world):
    from evals import digits as ev

    r = world.reference
    same = ev.fid(r.samples, r.samples, world, bootstrap=0)
    assert abs(same.value) < 1e-3 and same.low is None
    noise = ev.fid_real(torch.rand(200, 1, 8, 8) * 2 - 1, world, bootstrap=10)
    real = ev.fid(world.train.images[:200], world.held_out.images, world, bootstrap=10)
    assert noise.value > 3 * real.value  # uniform noise is far from digits
    assert noise.low <= noise.value <= noise.high
    ft = ev.fid_t(world.baseline.samples, world, bootstrap=0)
    assert ft.value >= 0 and ft.n_a == ft.n_b == len(r)
    with pytest.raises(ValueError, match="same prompts"):
        ev.fid_t(r.samples[:10], world)
    div = ev.per_prompt_diversity(r.samples, r.prompts, world)
    assert div["mean"] > 0 and len(div["per_prompt"]) == len(set(r.prompts))
    collapsed = r.samples[:1].expand(len(r), -1, -1, -1)
    assert ev.per_prompt_diversity(collapsed, r.prompts, world)["mean"] == pytest.approx(0.0, abs=1e-5)
    out = ev.evaluate_samples(r.samples, world, bootstrap=0)
    assert set(out) == {"prompt_accuracy", "fid", "diversity", "fid_t"} and out["fid_t"]["value"] < 1e-3


# ----------------------------------------------------------------------------- caching
def test_second_build_loads_everything_and_retrains_nothing(world, cache_root):
    files = {p: p.stat().st_mtime_ns for p in world.directory.rglob("*") if p.is_file()}
    again = build_world(QUICK, cache_dir=cache_root, progress=False)
    assert set(again.provenance.values()) == {"loaded"}, again.provenance
    assert again.directory == world.directory
    assert {p: p.stat().st_mtime_ns for p in world.directory.rglob("*") if p.is_file()} == files
    for p, q in zip(world.teacher.parameters(), again.teacher.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(again.reference.samples, world.reference.samples)
    assert again.figures == world.figures
    assert again.text_encoder.minilm_calls == 0  # MiniLM not even loaded


def test_cache_key_follows_the_config_and_the_env(tmp_path, monkeypatch):
    a = DigitsWorldConfig()
    assert a.config_hash() == DigitsWorldConfig().config_hash()
    assert a.with_overrides(["teacher.steps=10"]).config_hash() != a.config_hash()
    monkeypatch.setenv("SENSEFLOW_CACHE", str(tmp_path))
    assert a.cache_dir() == tmp_path / "worlds" / f"digits-{a.config_hash()}"
    assert a.cache_dir("elsewhere") == type(tmp_path)("elsewhere") / "worlds" / f"digits-{a.config_hash()}"
    with pytest.raises(KeyError, match="teacher.stepz"):
        a.with_overrides(["teacher.stepz=3"])


def test_world_files_are_safetensors_and_json_only(world):
    suffixes = {p.suffix for p in world.directory.rglob("*") if p.is_file()}
    assert suffixes <= {".safetensors", ".json", ".png"}, suffixes
    assert (world.directory / "samples" / "digit_7.png").exists()
    assert (world.directory / "teacher_loss.png").exists()
    from transformers import Dinov2Model

    bb = Dinov2Model.from_pretrained(str(world.backbone_dir))
    out = bb(pixel_values=torch.zeros(2, 3, 8, 8))
    assert out.last_hidden_state.shape == (2, 1 + (8 // QUICK.backbone.patch_size) ** 2, QUICK.backbone.hidden_size)


@pytest.mark.skipif(os.environ.get("SENSEFLOW_SKIP_CLI") == "1", reason="CLI check disabled")
def test_cli_build_prints_the_figures(world, cache_root):
    from typer.testing import CliRunner

    from senseflow.commands.world import app

    res = CliRunner().invoke(app, ["digits", "build", "--quick", "--cache-dir", str(cache_root), "--no-progress"],
                                 env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "classifier held-out accuracy" in res.output and "nothing (all cached)" in res.output


# ----------------------------------------------------------------------------- the torch-free cache check
def test_the_default_world_keeps_its_hash():
    # the cache key of the default world built when the benchmark settings were a hashed section; changing it
    # orphans that build
    assert DigitsWorldConfig().config_hash() == "7a69a9abbcae"
    with pytest.raises(KeyError):  # the benchmark left the world: senseflow bench step
        DigitsWorldConfig().with_overrides(["bench.threads=[3]"])


def test_cached_manifest_of_a_complete_world(world, cache_root):
    from senseflow.worlds.digits.cache import cache_problems, cached_manifest, expected_files

    m = cached_manifest(QUICK, cache_root)
    assert m is not None and cache_problems(QUICK, cache_root) == []
    assert m.directory == world.directory and m.figures == world.figures
    assert all((world.directory / f).is_file() for f in m.files) and m.files == expected_files()
    assert {p.name for p in m.grid_paths()} == {f"digit_{d}.png" for d in range(10)} | {"overview.png"}
    assert cached_manifest(QUICK.with_overrides(["teacher.steps=7"]), cache_root) is None  # another world


def _copy_world(world, root):
    import shutil

    dst = root / "worlds" / world.directory.name
    shutil.copytree(world.directory, dst)
    return dst


def test_incomplete_cache_is_not_answered_from_the_files(world, tmp_path):
    from senseflow.worlds.digits.cache import cache_problems, cached_manifest

    d = _copy_world(world, tmp_path)
    assert cached_manifest(QUICK, tmp_path) is not None
    (d / "samples" / "digit_3.png").unlink()
    floor = (d / "floor.safetensors").read_bytes()
    (d / "floor.safetensors").write_bytes(floor[:-10])  # truncated
    problems = cache_problems(QUICK, tmp_path)
    assert cached_manifest(QUICK, tmp_path) is None
    assert any("digit_3.png is missing" in p for p in problems), problems
    assert any("floor.safetensors is not a whole safetensors file" in p for p in problems), problems
    (d / "floor.safetensors").write_bytes(floor)
    (d / "samples" / "overview.png").unlink()
    (d / "text_cache.safetensors").unlink()
    assert sorted(cache_problems(QUICK, tmp_path)) == ["samples/digit_3.png is missing",
                                                       "samples/overview.png is missing",
                                                       "text_cache.safetensors is missing"]


def test_cli_build_falls_back_to_build_world_when_an_artifact_is_missing(world, tmp_path):
    from typer.testing import CliRunner

    from senseflow.commands.world import app
    from senseflow.worlds.digits.cache import cached_manifest

    d = _copy_world(world, tmp_path)
    (d / "baseline.safetensors").unlink()
    args = ["digits", "build", "--quick", "--cache-dir", str(tmp_path), "--no-progress"]
    res = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "built in this call: baseline; build_world took" in res.output
    m = cached_manifest(QUICK, tmp_path)
    assert m is not None and m.figures == world.figures
    res = CliRunner().invoke(app, args + ["--grids-to", str(tmp_path / "grids")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "built in this call: nothing (all cached); 23 files checked" in res.output
    assert "classifier held-out accuracy" in res.output and f"world: {d}" in res.output
    for p in m.grid_paths():
        assert (tmp_path / "grids" / p.name).read_bytes() == p.read_bytes()


def test_the_cached_build_command_imports_no_torch(world, cache_root):
    import subprocess
    import sys

    check = "import senseflow.commands.world, senseflow.worlds.digits.config; import sys; " \
            "assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True)
    # the whole cached `senseflow world digits build`, in a fresh interpreter
    code = ("import sys; from senseflow.cli import main; "
            f"rc = main(['world', 'digits', 'build', '--quick', '--cache-dir', {str(cache_root)!r}]); "
            "assert rc == 0, rc; bad = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules); "
            "assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ,
                                                                                          "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert "nothing (all cached)" in out.stdout and "classifier held-out accuracy" in out.stdout


# ----------------------------------------------------------------------------- the DMD-iteration benchmark
def test_the_step_benchmark_times_the_projects_distiller_step(world):
    import json

    from senseflow.bench.step import DEFAULT_RUNS, time_dmd_iterations

    assert "dmd_iteration" not in world.figures  # building a world times nothing
    rows = time_dmd_iterations(world, batch_size=8, periods=1, warmup=2)
    json.dumps(rows)  # results/bench/step.json holds them
    assert [r["run"] for r in rows] == list(DEFAULT_RUNS)
    by_run = {r["run"]: r for r in rows}
    assert by_run["digits-senseflow"]["discriminator"] == "VFMDiscriminator"
    assert by_run["digits-dmd2"]["method"] == "dmd2" and by_run["digits-dmd2"]["gan"] == "dmd2"
    assert by_run["digits-senseflow gan.kind=none"]["discriminator"] == "none"
    for r in rows:
        assert r["timing"] == "senseflow.distill.Distiller.step" and r["threads"] == 1
        assert r["batch_size"] == 8 and r["ttur"] == 5
        assert r["generator_iterations"] == 2 and r["critic_iterations"] == 8  # two full TTUR periods
        assert r["generator_ms"] > 0 and r["critic_ms"] > 0
        assert r["ttur_mean_ms"] == pytest.approx((r["generator_ms"] + 4 * r["critic_ms"]) / 5, abs=0.1)


def test_reference_rows_at_other_anchors_measure_the_do_nothing_teacher_there(world, tmp_path):
    """`world digits baselines --anchors 999`: the do-nothing row of a 1-step grid is the teacher's one Euler step,
    measured like the world's own 4-step baseline (same numbers where the anchors are the world's)."""
    import json

    from senseflow.worlds.digits.components import do_nothing_figures, record_reference_rows

    own = do_nothing_figures(world, list(world.anchor_indices))
    assert own["fid_t"]["value"] == pytest.approx(world.figures["baseline_4step"]["fid_t"]["value"], rel=1e-6)
    one = do_nothing_figures(world, [999])
    assert one["fid_t"]["value"] > own["fid_t"]["value"]           # one step is further from the 50-step teacher
    rows = record_reference_rows(world, tmp_path, "g1", [999])
    assert [p.name.rsplit("-", 1)[0] for p in rows] == ["teacher-50", "teacher-1-at-999"]
    ev = json.loads((rows[1] / "eval.json").read_text())["evaluations"][0]
    assert ev["metrics"]["fid_t"] == pytest.approx(one["fid_t"]["value"])
    assert json.loads((rows[1] / "status.json").read_text())["variant"] == "Teacher 1 step at the anchors (do nothing)"
    assert [p.name.rsplit("-", 1)[0] for p in record_reference_rows(world, tmp_path, "g4")] == ["teacher-50", "teacher-4"]
