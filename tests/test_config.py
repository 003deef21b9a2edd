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
