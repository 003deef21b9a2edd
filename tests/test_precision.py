"""The precision policy (senseflow.precision) and the optimizer choice, on a tiny SD3 teacher in bf16 (CPU).

What must hold: with fp32 master weights (the default) a run at the paper's lr 1e-6 changes essentially
every generator weight within 10 generator steps and each IDA lerp moves the fake score; with bf16
trainable weights the same run barely moves either (so the first assertion can fail), and the run says so
in its log and status.json. optim.eight_bit=true without bitsandbytes stops in one line before any weight
loads; "auto" records what it chose. The paper presets carry the authors' precision and optimizer values.
"""

import json
import sys
import types

import pytest
import torch
import yaml

from senseflow import config as C
from senseflow.cli import main

TINY = ["model.tiny=true", "model.resolution=32", "train.batch_size=2", "eval.metrics=[]", "train.mixed_precision=no",
        "gan.layers=null", "train.checkpoint_every=100", "model.dtype=bfloat16", "optim.ttur=1",
        "train.iterations=10", "optim.lr_generator=1e-6", "optim.lr_fake=1e-6", "optim.lr_disc=1e-6"]


def _bitsandbytes_imports() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:
        return False
    return True


def _tiny_run(tmp_path, monkeypatch, trainable: str):
    """10 generator steps at lr 1e-6; returns (fraction of G's trained weights that changed, fraction of
    F's weights each IDA lerp changed, status.json, stderr lines)."""
    from senseflow import losses
    from senseflow.components import build_components
    from senseflow.train import train

    cfg = C.resolve("sd35-large-senseflow", TINY + ["optim.eight_bit=auto", f"train.trainable_dtype={trainable}"])
    comps = build_components(cfg)
    start = {k: v.detach().clone() for k, v in comps.bundle.teacher.named_parameters()}
    assert all(v.dtype == torch.bfloat16 for v in start.values())

    stepped: set[int] = set()

    def record(optimizer, args, kwargs):  # weights a step updates from a gradient (SD3's last block has a dead branch)
        stepped.update(id(p) for group in optimizer.param_groups for p in group["params"]
                       if p.grad is not None and bool(p.grad.any()))

    ida_moved: list[float] = []
    real_ida = losses.ida_update_modules

    def spy_ida(fake_score, generator, lam):
        before = [p.detach().clone() for p in fake_score.parameters()]
        real_ida(fake_score, generator, lam)
        after = [p.detach() for p in fake_score.parameters()]
        ida_moved.append(sum(int((a != b).sum()) for a, b in zip(after, before)) / sum(b.numel() for b in before))

    monkeypatch.setattr(losses, "ida_update_modules", spy_ida)
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(record)
    try:
        result = train(cfg, tmp_path, comps, progress=False)
    finally:
        handle.remove()
    assert result.state == "completed" and result.iteration == 10
    g = dict(result.distiller.generator.named_parameters())
    with_grad = {n for n, p in g.items() if id(p) in stepped}
    assert len(with_grad) > 0.9 * len(g)
    changed = sum(int((g[n].detach().float() != start[n].float()).sum()) for n in with_grad)
    frac = changed / sum(g[n].numel() for n in with_grad)
    return frac, ida_moved, json.loads((tmp_path / "status.json").read_text())


def test_fp32_master_weights_train_every_weight_at_lr_1e6_and_ida_moves_f(tmp_path, monkeypatch, capsys):
    frac, ida_moved, status = _tiny_run(tmp_path, monkeypatch, "float32")
    assert frac >= 0.99, frac
    assert len(ida_moved) == 10 and min(ida_moved) >= 0.9, ida_moved
    assert status["precision"] == {"trainable_dtype": "float32", "generator": "float32", "fake_score": "float32",
                                   "teacher": "bfloat16", "discriminator_heads": "float32",
                                   "discriminator_backbone": "bfloat16", "compute": "stored dtype"}
    assert status["warnings"] == [] and "warning:" not in capsys.readouterr().err
    expect_8bit = _bitsandbytes_imports()
    assert status["optimizer"]["requested"] == "auto" and status["optimizer"]["eight_bit"] == expect_8bit
    assert status["optimizer"]["class"] == ("bitsandbytes.optim.adamw.AdamW8bit" if expect_8bit
                                            else "torch.optim.adamw.AdamW")


def test_bf16_trainable_weights_barely_move_at_lr_1e6_and_the_run_says_so(tmp_path, monkeypatch, capsys):
    frac, ida_moved, status = _tiny_run(tmp_path, monkeypatch, "bfloat16")
    assert frac < 0.05, frac
    assert len(ida_moved) == 10 and max(ida_moved) < 0.05, ida_moved
    assert status["precision"]["generator"] == status["precision"]["fake_score"] == "bfloat16"
    assert status["precision"]["discriminator_heads"] == "float32"   # the heads keep fp32 in every setting
    warned = [w for w in status["warnings"] if w.startswith("optim.lr_generator=1e-06 ")]
    assert len(warned) == 1 and "train.trainable_dtype=float32" in warned[0] and "\n" not in warned[0]
    assert any(w.startswith("optim.lr_fake=1e-06 ") for w in status["warnings"])
    assert not any(w.startswith("optim.lr_disc") for w in status["warnings"])  # fp32 heads move at 1e-6
    err = capsys.readouterr().err.splitlines()
    assert f"warning: {warned[0]}" in err


def test_step_warnings_follow_the_weights_resolution():
    from senseflow.precision import movable_fraction

    w = torch.nn.Parameter(torch.full((1000,), 0.02))
    assert movable_fraction([w], 1e-6) == 1.0
    assert movable_fraction([torch.nn.Parameter(w.detach().bfloat16())], 1e-6) == 0.0
    assert movable_fraction([torch.nn.Parameter(w.detach().bfloat16())], 1e-3) == 1.0


@pytest.mark.skipif(_bitsandbytes_imports(), reason="bitsandbytes imports here: the error path cannot be reached")
def test_eight_bit_without_bitsandbytes_stops_in_one_line_before_any_weight_loads(tmp_path, monkeypatch, capsys):
    import senseflow.components

    def never(*a, **k):
        raise AssertionError("weights were loaded before the optimizer was checked")

    monkeypatch.setattr(senseflow.components, "build_components", never)
    run = tmp_path / "run"
    rc = main(["train", "sd35-large-senseflow", "optim.eight_bit=true", "--run-dir", str(run), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "optim.eight_bit=true needs bitsandbytes" in err[0] and "optim.eight_bit=false" in err[0]
    assert "Traceback" not in err[0]


def test_eight_bit_choice_is_explicit(monkeypatch):
    from senseflow.distill import eight_bit_choice
    from senseflow.errors import UserError

    o = C.resolve("sd35-large-senseflow").optim
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)      # import fails, as where it is not installed
    assert eight_bit_choice(o.model_copy(update={"eight_bit": "auto"})) is False
    assert eight_bit_choice(o.model_copy(update={"eight_bit": False})) is False
    with pytest.raises(UserError, match="optim.eight_bit=true needs bitsandbytes"):
        eight_bit_choice(o.model_copy(update={"eight_bit": True}))
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))
    assert eight_bit_choice(o.model_copy(update={"eight_bit": "auto"})) is True
    assert eight_bit_choice(o.model_copy(update={"eight_bit": True})) is True
    with pytest.raises(C.ConfigError, match="optim.eight_bit"):
        C.resolve("sd35-large-senseflow", ["optim.eight_bit=sometimes"])


# the authors' trainers and configs (XingtongGe/SenseFlow f7da31b7): AdamW (0.9, 0.999), eps 1e-8, weight
# decay 0, clip 1.0, constant lr; fp32 weights under bf16 autocast except FLUX (bf16 weights); 8-bit AdamW
# for SD3.5-Large and FLUX. docs/FIDELITY.md, "Precision and optimizer".
AUTHORS = {
    "sd35-large-senseflow": dict(lr=1e-6, eight_bit=True, trainable="float32"),
    "sd35-medium-senseflow": dict(lr=1e-6, eight_bit=False, trainable="float32"),
    "flux-dev-senseflow": dict(lr=1e-5, eight_bit=True, trainable="bfloat16"),
    "sdxl-senseflow": dict(lr=1e-6, eight_bit=False, trainable="float32"),
}


@pytest.mark.parametrize("preset", sorted(AUTHORS))
def test_config_show_prints_the_authors_precision_and_optimizer(preset, capsys):
    assert main(["config", "show", preset]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    want = AUTHORS[preset]
    o, t = cfg["optim"], cfg["train"]
    assert (o["lr_generator"], o["lr_fake"], o["lr_disc"]) == (want["lr"],) * 3
    assert o["betas"] == [0.9, 0.999] and o["eps"] == 1e-8 and o["weight_decay"] == 0.0
    assert o["grad_clip"] == 1.0 and o["warmup"] == 0 and o["eight_bit"] is want["eight_bit"]
    assert t["trainable_dtype"] == want["trainable"] and t["mixed_precision"] == "bf16"
    assert cfg["model"]["dtype"] == "bfloat16"



def test_warmup_is_dmd2s_constant_with_warmup_and_zero_is_constant():
    """optim.warmup=W: every optimizer steps with lr * min(1, iteration / W) (DMD2's schedule, stepped once per
    iteration); W = 0 keeps the configured rate (the authors' constant schedule)."""
    from senseflow import flow
    from senseflow.distill import Batch, Distiller, warmup_factor
    from senseflow.models.base import IdentityCodec
    from senseflow.worlds.gmm import GMMTeacher, GMMTextEncoder, MLPDenoiser

    assert [warmup_factor(i, 4) for i in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    means = torch.tensor([[[2.0, 2.0]], [[-2.0, -2.0]]])
    teacher, text = GMMTeacher(means, 0.3), GMMTextEncoder(2)
    for warmup in (4, 0):
        cfg = C.resolve("digits-senseflow", ["gan.kind=none", "optim.ttur=1", "optim.lr_generator=1e-3",
                                             "optim.lr_fake=2e-3", f"optim.warmup={warmup}"])
        d = Distiller(cfg, teacher, text, IdentityCodec(), flow.sigma_table(1000, 1.0),
                      student_init=MLPDenoiser(2, 2, 8))
        seen = []
        for it in range(6):
            x0 = teacher.sample(torch.zeros(4, dtype=torch.long))
            d.step(it, Batch(x0, x0, text.encode(["class 0"] * 4)))
            seen += [d.opt_g.param_groups[0]["lr"], d.opt_f.param_groups[0]["lr"]]
        want = [lr * warmup_factor(i, warmup) for i in range(6) for lr in (1e-3, 2e-3)]
        assert seen == pytest.approx(want), (warmup, seen)


def test_sampling_computes_in_the_runs_autocast_on_gpus_only():
    import contextlib
    import warnings

    from senseflow.precision import autocast

    assert isinstance(autocast(torch.device("cpu"), "bf16"), contextlib.nullcontext)
    assert isinstance(autocast(torch.device("cuda", 0), "no"), contextlib.nullcontext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no CUDA here: torch warns that the context would be disabled
        ctx = autocast(torch.device("cuda", 0), "bf16")
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16


def test_resume_refuses_another_optimizer_class(tmp_path):
    """optim.eight_bit=auto may pick differently on another machine; the checkpoint's optimizer state would not
    load into the other class, so resuming says so in one line instead."""
    from senseflow.components import build_components
    from senseflow.errors import UserError
    from senseflow.train import train

    cfg = C.resolve("sd35-large-dmd2", TINY + ["optim.eight_bit=auto", "train.iterations=2", "model.dtype=float32"])
    assert train(cfg, tmp_path, build_components(cfg), progress=False, stop_after=1).state == "stopped"
    status = json.loads((tmp_path / "status.json").read_text())
    status["optimizer"]["class"] = "bitsandbytes.optim.adamw.AdamW8bit"
    (tmp_path / "status.json").write_text(json.dumps(status))
    with pytest.raises(UserError, match="was trained with bitsandbytes.optim.adamw.AdamW8bit and would resume with"):
        train(cfg, tmp_path, build_components(cfg), progress=False)
    status["optimizer"]["class"] = "torch.optim.adamw.AdamW"
    (tmp_path / "status.json").write_text(json.dumps(status))
    assert train(cfg, tmp_path, build_components(cfg), progress=False).state == "completed"


def test_cuda_runs_turn_cudnn_attention_off():
    """cuDNN's fused attention backward failed on FLUX's DMD2 step on an H200 (docs/FIDELITY.md): GPU runs
    turn it off before their first CUDA work, leaving flash and memory-efficient attention on."""
    from senseflow import cuda_kernels

    before = (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
              torch.backends.cuda.mem_efficient_sdp_enabled())
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        cuda_kernels.configure()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() == before[1]
        assert torch.backends.cuda.mem_efficient_sdp_enabled() == before[2]
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before[0])
