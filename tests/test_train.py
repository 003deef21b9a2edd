"""Presets on tiny models of every family, exact resume, divergence, export/sample through the CLI."""

import json

import pytest
import torch
from safetensors.torch import load_file

from senseflow import config as C
from senseflow.cli import main
from senseflow.components import build_components
from senseflow.checkpoint import checkpoints
from senseflow.train import train

TINY = ["model.tiny=true", "model.resolution=32", "train.batch_size=2", "eval.metrics=[]",
        "train.mixed_precision=no", "gan.layers=null", "train.log_every=1", "optim.eight_bit=false"]


@pytest.mark.parametrize("preset", ["sd35-large-senseflow", "sd35-large-dmd2", "flux-dev-senseflow", "flux-dev-dmd2",
                                    "sdxl-senseflow", "sdxl-dmd2"])
def test_each_preset_runs_three_iterations_on_tiny_models(preset, tmp_path):
    cfg = C.resolve(preset, TINY + ["train.iterations=3", "optim.ttur=1"])
    result = train(cfg, tmp_path, build_components(cfg), progress=False)
    assert result.state == "completed" and result.iteration == 3
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["gen_step"] == 1.0 and r["loss_fake"] > 0 and "loss_dmd" in r
        assert ("loss_isg" in r) == cfg.isg.enabled
    saved = load_file(str(checkpoints(tmp_path)[-1] / "generator.safetensors"))
    teacher = result.distiller.teacher.state_dict()
    assert any(not torch.equal(saved[k], teacher[k]) for k in saved if k in teacher)   # the student moved
    if cfg.model.family == "flux":
        assert not result.distiller.generator.has_guidance_input                         # student has no guidance


def _weights(run_dir):
    ck = checkpoints(run_dir)[-1]
    return {n: load_file(str(ck / f"{n}.safetensors")) for n in ("generator", "fake_score", "discriminator")
            if (ck / f"{n}.safetensors").is_file()}


def test_resume_is_bit_identical(tmp_path):
    over = TINY + ["train.iterations=6", "optim.ttur=2", "train.checkpoint_every=3", "gan.weight=1.0",
                   "gan.omega=one"]
    cfg = C.resolve("sd35-large-senseflow", over)
    comps = build_components(cfg)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(cfg, straight, comps, progress=False)
    first = train(cfg, split, build_components(cfg), progress=False, stop_after=3)
    assert first.state == "stopped" and first.iteration == 3
    assert json.loads((split / "status.json").read_text())["state"] == "stopped"
    second = train(cfg, split, build_components(cfg), progress=False)   # a fresh process would do the same
    assert second.state == "completed" and second.iteration == 6
    a, b = _weights(straight), _weights(split)
    assert a.keys() == b.keys() and "discriminator" in a
    for part in a:
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    la = (straight / "metrics.jsonl").read_text().splitlines()
    lb = (split / "metrics.jsonl").read_text().splitlines()
    strip = lambda ls: [{k: v for k, v in json.loads(x).items() if k != "time"} for x in ls]  # noqa: E731
    assert strip(la) == strip(lb)


@pytest.mark.parametrize("preset", ["sd35-large-senseflow", "sd35-large-dmd2"])
def test_generator_step_moves_g_through_a_frozen_discriminator(preset, monkeypatch):
    """The adversarial term alone gives G nonzero gradients; D (and, for DMD2's head, the fake score it reads)
    accumulates none during the G step, and requires grad again afterwards."""
    from senseflow import losses
    from senseflow.distill import Distiller, step_rng

    cfg = C.resolve(preset, TINY + ["gan.weight=1.0", "gan.omega=one", "isg.enabled=false", "ida.enabled=false"])
    comps = build_components(cfg)
    b = comps.bundle
    d = Distiller(cfg, b.teacher, b.text_encoder, b.codec, b.sigma_table, make_discriminator=comps.make_discriminator)
    monkeypatch.setattr(losses, "dmd_loss", lambda x0, grad: (x0 * 0).sum())  # DMD adds exactly zero gradient
    seen = {}
    clip = d._clip

    def spy(params):  # the G step clips right after its backward: look at every gradient there
        if not seen:
            seen.update(g=[p.grad for p in d.generator.parameters()],
                        d=[p.grad for p in d.discriminator.trainable_parameters()],
                        f=[p.grad for p in d.fake_score.parameters()])
        return clip(params)

    d._clip = spy
    d._fake_score_update = lambda *a, **k: {}
    d._discriminator_update = lambda *a, **k: {}
    m = d.step(0, comps.data.batch(0, cfg.train.batch_size, step_rng(0, 0, stream=2)))
    assert m["gen_step"] == 1.0 and m["loss_adv"] != 0
    assert any(g is not None and float(g.abs().sum()) > 0 for g in seen["g"])
    assert all(g is None for g in seen["d"]) and all(g is None for g in seen["f"])
    assert all(p.grad is None for p in d.discriminator.trainable_parameters())
    assert all(p.requires_grad for p in d.discriminator.trainable_parameters())
    assert all(p.requires_grad for p in d.fake_score.parameters())


def test_divergence_is_detected_and_last_good_checkpoint_kept(tmp_path):
    cfg = C.resolve("sd35-large-dmd2", TINY + ["train.iterations=8", "train.checkpoint_every=2",
                                              "train.divergence_patience=2", "optim.ttur=1"])
    comps = build_components(cfg)
    real_batch = comps.data.batch

    def poisoned(iteration, batch_size, rng):
        b = real_batch(iteration, batch_size, rng)
        if iteration >= 4:
            b.latents.fill_(float("nan"))
        return b
    comps.data.batch = poisoned
    result = train(cfg, tmp_path, comps, progress=False)
    assert result.state == "diverged"
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "diverged" and "non-finite" in status["reason"]
    assert checkpoints(tmp_path)[-1].name == "iter_0000004"
    for t in _weights(tmp_path)["generator"].values():
        assert torch.isfinite(t).all()


def test_missing_tracker_package_is_a_clear_error(tmp_path):
    import importlib.util

    from senseflow.errors import UserError

    missing = [t for t in ("tensorboard", "wandb") if importlib.util.find_spec(t) is None]
    if not missing:
        pytest.skip("both tracker packages are installed here")
    cfg = C.resolve("sd35-large-dmd2", TINY + ["train.iterations=1", f"train.trackers=[{missing[0]}]"])
    with pytest.raises(UserError, match=f"pip install {missing[0]}"):
        train(cfg, tmp_path, build_components(cfg), progress=False)


def test_train_refuses_a_different_config_in_the_same_folder(tmp_path):
    cfg = C.resolve("sd35-large-dmd2", TINY + ["train.iterations=1"])
    train(cfg, tmp_path, build_components(cfg), progress=False)
    other = C.resolve("sd35-large-dmd2", TINY + ["train.iterations=1", "ida.lam=0.5"])
    with pytest.raises(C.ConfigError, match="different config"):
        train(other, tmp_path, build_components(other), progress=False)


def test_cli_train_sample_export_roundtrip(tmp_path, capsys):
    from diffusers import SD3Transformer2DModel

    run = tmp_path / "run"
    args = ["train", "sd35-large-senseflow", *TINY, "train.iterations=2", "optim.ttur=1",
            f"output.root={tmp_path}", "--run-dir", str(run), "--no-progress"]
    assert main(args) == 0
    assert json.loads((run / "status.json").read_text())["state"] == "completed"
    assert main(["sample", str(run), "-p", "a red square", "-p", "a blue circle", "--n", "3",
                 "--sampler", "euler", "--out", str(tmp_path / "s.png")]) == 0
    from PIL import Image

    im = Image.open(tmp_path / "s.png")
    assert im.size[0] > im.size[1] > 0
    assert main(["export", str(run), str(tmp_path / "student")]) == 0
    exported = SD3Transformer2DModel.from_pretrained(tmp_path / "student" / "transformer")
    saved = load_file(str(checkpoints(run)[-1] / "generator.safetensors"))
    sd = exported.state_dict()
    assert all(torch.equal(sd[k.removeprefix("backbone.")], v) for k, v in saved.items())
    # the exported student drops into the family's diffusers pipeline in place of the teacher
    from senseflow.models.tiny import T5_MAX_LENGTH, tiny_bundle, tiny_pipeline

    pipe = tiny_pipeline("sd3", bundle=tiny_bundle("sd3", resolution=32))
    pipe.transformer = exported
    out = pipe("a red square", height=32, width=32, num_inference_steps=4, guidance_scale=1.0,
               max_sequence_length=T5_MAX_LENGTH, output_type="latent",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 16, 16, 16) and torch.isfinite(out).all()
    info = json.loads((tmp_path / "student" / "senseflow.json").read_text())
    assert info["anchor_indices"] == [999, 749, 499, 249]
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "nothing-here"), "-p", "x"]) == 2
    assert "neither a run folder" in capsys.readouterr().err
