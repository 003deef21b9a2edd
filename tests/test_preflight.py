"""Preflight (senseflow.preflight): every input file a run needs, present or missing, in `grid plan`, and
`grid run` refusing to submit a grid with missing inputs (one line each, status 2) unless told to."""

import yaml

from senseflow import config as C
from senseflow import preflight
from senseflow.cli import main


def _grid(tmp_path, overrides):
    doc = {"grid": "pf", "base": "sd35-large-senseflow", "seeds": [0], "allow_outside_results": True,
           "overrides": {"output.root": str(tmp_path / "results" / "runs"), **overrides},
           "variants": [{"name": "SenseFlow", "overrides": {}}]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _teacher_dir(tmp_path):
    root = tmp_path / "sd35"
    for name in ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
                 "tokenizer_3"):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text("{}")
    dino = tmp_path / "dinov2"
    dino.mkdir()
    (dino / "config.json").write_text("{}")
    data = tmp_path / "data"
    data.mkdir()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    return root, dino, data, prompts


def test_every_input_of_a_paper_run_is_listed_with_its_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = C.resolve("sd35-large-senseflow", [f"model.teacher={tmp_path / 'nowhere'}", "data.path=", "eval.prompts=",
                                             "eval.metrics=[clip_score]"])
    items = preflight.check(cfg)
    keys = [i.key for i in items]
    assert keys.count("model.teacher") == 8 and "gan.backbone" in keys and "data.path" in keys
    assert "eval.prompts" in keys and any(k.startswith("eval.weights.clip_score") for k in keys)
    assert not any(i.present for i in items if i.key in ("model.teacher", "data.path", "eval.prompts"))
    assert preflight.check(C.resolve("digits-senseflow")) == []
    assert preflight.check(C.resolve("sd35-large-senseflow", ["model.tiny=true"])) == []


def test_present_inputs_are_found(tmp_path):
    root, dino, data, prompts = _teacher_dir(tmp_path)
    cfg = C.resolve("sd35-large-senseflow", [f"model.teacher={root}", f"gan.backbone={dino}", f"data.path={data}",
                                             f"eval.prompts={prompts}", "eval.metrics=[]"])
    items = preflight.check(cfg)
    assert items and all(i.present for i in items), [i.line() for i in items if not i.present]


def test_grid_run_refuses_missing_inputs_with_one_line_each(tmp_path, capsys):
    path = _grid(tmp_path, {"model.teacher": str(tmp_path / "nowhere"), "data.path": str(tmp_path / "none"),
                            "eval.metrics": []})
    assert main(["grid", "plan", str(path)]) == 0
    assert "MISSING" in capsys.readouterr().out
    assert main(["grid", "run", str(path), "--executor", "debug", "--job", "smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 8 + 1 + 1 + 1 + 1  # teacher components, backbone, data, prompts, summary
    assert all(line.startswith("missing input: ") for line in err[:-1]) and "--allow-missing" in err[-1]
    assert not (tmp_path / "results" / "runs" / "pf").exists()  # nothing submitted
