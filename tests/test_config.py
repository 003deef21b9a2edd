"""Config presets, YAML + overrides, and one-line errors for bad input."""

import pytest
import yaml

from senseflow import config as C
from senseflow.cli import main


def test_sd35_large_preset_has_the_algorithm_settings():
    c = C.resolve("sd35-large-senseflow")
    assert c.model.family == "sd3" and c.model.table_shift == 3.0
    assert c.generator.anchor_indices == [999, 749, 499, 249]
    assert (c.dmd.timestep.kind, c.dmd.timestep.low, c.dmd.timestep.high) == ("table_index", 20, 980)
    assert (c.dmd.guidance.low, c.dmd.guidance.high) == (3.0, 10.0)
    assert c.fake_score.timestep.kind == "logit_normal" and c.fake_score.timestep.shift == 3.0
    assert c.ida.enabled and c.ida.lam == 0.97
    assert c.isg.enabled and c.isg.weight == 1.0 and c.isg.margin == 50 and c.isg.distance == "pseudo_huber"
    assert (c.isg.guidance.low, c.isg.guidance.high) == (5.0, 5.0)
    assert c.gan.kind == "vfm" and c.gan.weight == 0.1 and c.gan.layers == [2, 5, 8, 10, 14, 19, 23]
    assert c.optim.lr_generator == 1e-6 and c.optim.ttur == 5 and c.optim.eight_bit and c.optim.grad_clip == 1.0
    assert c.generator.backsim_prob == 0.5


def test_other_presets():
    m = C.resolve("sd35-medium-senseflow")
    assert m.ida.lam == 0.98 and m.optim.ttur == 10 and m.isg.weight == 0.5
    f = C.resolve("flux-dev-senseflow")
    assert f.optim.lr_generator == 1e-5 and f.gan.weight == 2.0 and f.gan.omega == "paper"
    assert f.generator.anchor_indices == [999, 903, 758, 511] and f.isg.margin == 20
    x = C.resolve("sdxl-senseflow")
    assert not x.ida.enabled and x.isg.weight == 0.2 and x.fake_score.loss == "epsilon"
    d = C.resolve("sd35-large-dmd2")
    assert d.method == "dmd2" and not d.ida.enabled and not d.isg.enabled and d.gan.kind == "dmd2"
    for name in C.PRESETS:
        C.resolve(name)


def test_yaml_with_base_preset_and_overrides(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({"preset": "digits-senseflow", "name": "mine", "isg": {"weight": 0.5}}))
    c = C.resolve(p, ["ida.lam=0.9", "train.iterations=7"])
    assert (c.name, c.isg.weight, c.ida.lam, c.train.iterations) == ("mine", 0.5, 0.9, 7)
    assert c.model.family == "digits"
    # the saved resolved config reproduces the same run
    C.save(c, tmp_path / "config.yaml")
    again = C.build(C.load_yaml(tmp_path / "config.yaml"))
    assert again == c and again.identity_hash() == c.identity_hash()
    assert C.resolve(p, ["ida.lam=0.8"]).identity_hash() != c.identity_hash()


BAD = [
    (["ida.lamb=0.9"], "did you mean 'ida.lam'"),
    (["isg.weight=-1"], "isg.weight=-1"),
    (["ida.lam=1.5"], "ida.lam=1.5"),
    (["gan.kind=stylegan"], "gan.kind='stylegan' is not allowed; expected one of"),
    (["train.iterations=many"], "train.iterations='many'"),
    (["generator.anchor_indices=[249,499]"], "strictly decreasing"),
    (["optim.betas=[0.9,1.2]"], "optim.betas"),
    (["isg.margin=300"], "lower isg.margin"),
    (["dmd.guidance.low=9", "dmd.guidance.high=2"], "must be >= low"),
    (["model.family=sd4"], "model.family='sd4'"),
    (["bogus_section.x=1"], "unknown key 'bogus_section'"),
    (["ida.lam"], "must look like key.path=value"),
    # the derived method: a stated one that disagrees names the key, what the settings make it and the fix
    (["method=custom"], "method='custom' disagrees with the settings, which make this run 'senseflow'"),
    (["method=dmd2"], "method is derived from them: remove the key"),
    # settings no code read are gone: the unknown-key message applies
    (["data.kind=image_text_folder"], "unknown key 'data.kind'"),
    (["data.num_workers=4"], "unknown key 'data.num_workers'"),
]


@pytest.mark.parametrize("overrides,expected", BAD)
def test_bad_overrides_give_one_line_errors(overrides, expected, capsys):
    rc = main(["config", "show", "digits-senseflow", *overrides])
    err = capsys.readouterr().err
    assert rc == 2
    assert expected in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_bad_files_and_presets(tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("ida: {lam: 0.9\n")
    not_map = tmp_path / "list.yaml"
    not_map.write_text("- 1\n- 2\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text("preset: digits-senseflow\nisg:\n  wieght: 2\n")
    cases = [("sd35-larg", "did you mean 'sd35-large"), (str(tmp_path / "missing.yaml"), "does not exist"),
             (str(bad_yaml), "not valid YAML"), (str(not_map), "must hold a mapping"),
             (str(typo), "did you mean 'isg.weight'")]
    for source, expected in cases:
        rc = main(["config", "show", source])
        err = capsys.readouterr().err
        assert rc == 2 and expected in err and "Traceback" not in err, (source, err)


def test_config_show_prints_resolved_yaml(capsys):
    assert main(["config", "show", "sd35-large-senseflow", "isg.weight=0.25"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["isg"]["weight"] == 0.25 and out["ida"]["lam"] == 0.97 and out["model"]["table_shift"] == 3.0


# ---------------------------------------------------------------------------- a config that cannot lie
def test_method_is_derived_from_the_flags():
    assert {n: C.resolve(n).method for n in C.PRESETS} == {
        n: ("dmd2" if "-dmd2" in n else "senseflow") for n in C.PRESETS}
    dmd2 = ["gan.kind=dmd2", "gan.omega=one", "ida.enabled=false", "isg.enabled=false"]
    assert C.resolve("digits-senseflow", dmd2).method == "dmd2"
    # every ablation cell between the two recipes is "custom", without saying so
    for over in (["ida.enabled=true"], ["isg.enabled=true"], ["ida.enabled=true", "isg.enabled=true"]):
        assert C.resolve("digits-dmd2", over).method == "custom"
    for over in (["ida.enabled=false"], ["isg.enabled=false"], ["gan.kind=none"]):
        assert C.resolve("sd35-large-senseflow", over).method == "custom"
    # SDXL's SenseFlow recipe has no IDA (the authors' SDXL trainer): there IDA makes the run custom
    assert C.resolve("sdxl-senseflow").method == "senseflow"
    assert C.resolve("sdxl-senseflow", ["ida.enabled=true"]).method == "custom"
    # a stated method that agrees is accepted (saved configs and old grids state it), and the property follows
    # the settings after a change
    cfg = C.resolve("digits-dmd2", ["method=dmd2"])
    assert C.build(cfg.to_dict()) == cfg and list(cfg.to_dict())[:2] == ["name", "method"]
    cfg.ida.enabled = True
    assert cfg.method == "custom"


def test_method_is_not_part_of_the_run_id():
    a = C.resolve("digits-dmd2")
    assert C.resolve("digits-dmd2", ["method=dmd2"]).identity_hash() == a.identity_hash()
    assert C.resolve("digits-dmd2", ["ida.enabled=true"]).identity_hash() != a.identity_hash()


def test_preset_table_gives_each_preset_its_recipe():
    for teacher in ("sd35-large", "sd35-medium", "flux-dev", "sdxl", "digits"):
        sf, d2 = C.resolve(f"{teacher}-senseflow"), C.resolve(f"{teacher}-dmd2")
        assert (sf.name, d2.name, sf.preset, d2.preset) == ("SenseFlow", "DMD2", f"{teacher}-senseflow", f"{teacher}-dmd2")
        assert (d2.gan.kind, d2.gan.omega, d2.gan.train_fake_score_body, d2.generator.backsim_prob) == ("dmd2", "one", True, 1.0)
        assert d2.gan.weight == (1e-2 if teacher == "digits" else 5e-3) and d2.gan.disc_weight == 1e-2
        assert d2.optim.lr_disc == d2.optim.lr_fake  # DMD2 trains its head with the fake score: one rate
        assert d2.model == sf.model and d2.dmd == sf.dmd and d2.train == sf.train
    assert C.resolve("sd35-large-senseflow").train.iterations == C.resolve("sd35-medium-senseflow").train.iterations == 27000
    x, a = C.resolve("sdxl-dmd2"), C.resolve("sdxl-dmd2-authors")
    assert (x.optim.lr_generator, x.optim.weight_decay, x.optim.grad_clip) == (5e-7, 0.01, 10.0)
    assert (a.optim.lr_generator, a.optim.lr_disc, a.optim.grad_clip, a.generator.backsim_prob) == (1e-6, 1e-6, 1.0, 0.0)


def test_fid_t_reference_sampling_reads_the_eval_settings(monkeypatch):
    """eval.teacher_steps and eval.teacher_guidance drive the teacher's reference samples; they are evaluation
    settings (not in the run id), and non-default ones get their own sample folder."""
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    import evals.pipeline as P
    import senseflow.generator as G

    seen: dict = {}

    def generate(fn, prompts, seeds, out_dir, **kw):
        if kw["model"] == "teacher":
            fn(prompts[:1], seeds[:1])
            seen.update(folder=Path(out_dir).name, steps=kw["steps"])
        return None

    def teacher_sample(teacher, cond, uncond, noise, sigmas, guidance):
        seen.update(sigmas=sigmas, guidance=guidance)
        return noise

    monkeypatch.setattr(P, "generate_samples", generate)
    monkeypatch.setattr(P, "build_metrics", lambda *a, **k: [])
    monkeypatch.setattr(P, "evaluate", lambda *a, **k: {})
    monkeypatch.setattr(P, "flatten_results", lambda r: r)
    monkeypatch.setattr(G, "teacher_sample", teacher_sample)
    text = SimpleNamespace(encode=lambda ps: torch.zeros(len(ps), 2))
    comps = SimpleNamespace(bundle=SimpleNamespace(text_encoder=text, latent_shape=(1, 2, 2), teacher=None),
                            render=lambda x: x, sample_prompts=["a"])
    student = SimpleNamespace(device=torch.device("cpu"), sample=lambda cond, noise, *a, **k: noise)
    base = ["eval.num_samples=2", "eval.metrics=[fid_t]", "model.table_shift=1.0"]
    default = C.resolve("sd35-medium-senseflow", base)
    P.evaluate_student(student, comps, default, "euler", progress=False, out_root=Path("unused"))
    assert (seen["folder"], seen["steps"], len(seen["sigmas"]), seen["guidance"]) == ("teacher", 28, 28, 4.5)
    mine = C.resolve("sd35-medium-senseflow", [*base, "eval.teacher_steps=4", "eval.teacher_guidance=2"])
    P.evaluate_student(student, comps, mine, "euler", progress=False, out_root=Path("unused"))
    assert (seen["folder"], seen["steps"], seen["guidance"]) == ("teacher-4steps-guidance2", 4, 2.0)
    assert seen["sigmas"] == [1.0, 0.75, 0.5, 0.25]
    assert mine.identity_hash() == default.identity_hash()
