"""Grid files: expansion, validation errors that name the cell and key, run identity, `grid plan`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from senseflow.cli import main
from senseflow.config import ConfigError, resolve
from senseflow.grid import cell_state, load_grid, run_lock

REPO = Path(__file__).resolve().parents[1]


def grid_doc(tmp_path: Path, **extra) -> dict:
    doc = {
        "grid": "g",
        "allow_outside_results": True,
        "base": "digits-senseflow",
        "overrides": {"train.iterations": 30, "output.root": str(tmp_path / "runs")},
        "eval": {"num_samples": 100},
        "seeds": [0, 1],
        "axes": {"ida.enabled": [False, True]},
        "variants": [{"name": "full"}, {"name": "w/o ISG", "overrides": ["isg.enabled=false"]},
                     {"name": "DMD2", "base": "digits-dmd2"}],
    }
    doc.update(extra)
    return doc


def write(tmp_path: Path, doc: dict, name: str = "grid.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def test_expansion_crosses_variants_axes_and_seeds(tmp_path):
    grid = load_grid(write(tmp_path, grid_doc(tmp_path)))
    assert len(grid.specs) == 3 * 2 * 2
    names = [s.name for s in grid.specs]
    assert names[:4] == ["full (ida.enabled=false)"] * 2 + ["full (ida.enabled=true)"] * 2
    by = {(s.name, s.seed): s.cfg for s in grid.specs}
    c = by[("w/o ISG (ida.enabled=true)", 1)]
    assert (c.isg.enabled, c.ida.enabled, c.train.seed, c.train.iterations, c.eval.num_samples) == (False, True, 1, 30, 100)
    assert c.name == "w/o ISG (ida.enabled=true)" and c.output.grid == "g"
    d = by[("DMD2 (ida.enabled=false)", 0)]
    assert d.method == "dmd2" and d.gan.kind == "dmd2" and d.train.iterations == 30  # grid overrides reach every base
    # the later layer wins: axis values over the variant's overrides over the grid's
    g2 = load_grid(grid_doc(tmp_path, variants=[{"name": "v", "overrides": {"ida": {"enabled": False}}}],
                            axes={"ida.enabled": [True]}))
    assert g2.specs[0].cfg.ida.enabled is True


def test_seeds_choose_runs_and_a_seed_the_grid_lacks_is_one_line(tmp_path, capsys):
    """`grid run --seeds 0` runs part of a grid now (the main job's subset); the rest joins later."""
    grid = load_grid(write(tmp_path, grid_doc(tmp_path, seeds=[0, 1, 2])))
    part = grid.select(None, [0, 2])
    assert {s.seed for s in part} == {0, 2} and len(part) == 2 * len(grid.specs) // 3
    assert [s.name for s in grid.select(["full*"], [1])] == ["full (ida.enabled=false)", "full (ida.enabled=true)"]
    path = write(tmp_path, grid_doc(tmp_path, seeds=[0, 1, 2]))
    assert main(["grid", "plan", str(path), "--seeds", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seeds 7 is not a seed of grid 'g'" in err[0] and "seeds: 0, 1, 2" in err[0]


def test_axes_only_and_override_forms_agree(tmp_path):
    a = load_grid({"base": "digits-senseflow", "overrides": ["isg.weight=0.5", "train.iterations=10"],
                   "axes": {"ida.lam": [0.9, 0.95], "isg.enabled": [True]}}, name="axes")
    b = load_grid({"base": "digits-senseflow", "overrides": {"isg": {"weight": 0.5}, "train.iterations": 10},
                   "axes": {"ida.lam": [0.9, 0.95], "isg.enabled": [True]}}, name="axes")
    assert [s.name for s in a.specs] == ["ida.lam=0.9, isg.enabled=true", "ida.lam=0.95, isg.enabled=true"]
    assert [s.run_id for s in a.specs] == [s.run_id for s in b.specs]
    assert a.specs[1].cfg.isg.weight == 0.5 and a.specs[1].cfg.ida.lam == 0.95


def test_run_ids_stable_distinct_and_independent_of_output_root(tmp_path):
    g1 = load_grid(write(tmp_path, grid_doc(tmp_path)))
    g2 = load_grid(write(tmp_path, grid_doc(tmp_path)))
    ids = [s.run_id for s in g1.specs]
    assert ids == [s.run_id for s in g2.specs]
    assert len(set(ids)) == len(ids)
    other = grid_doc(tmp_path)
    other["overrides"]["output.root"] = str(tmp_path / "elsewhere")
    g3 = load_grid(other)
    assert [s.run_id for s in g3.specs] == ids
    assert g3.specs[0].run_dir == tmp_path / "elsewhere" / "g" / ids[0]
    # the same resolved config built by hand gets the same id (senseflow train would find the run)
    s = g1.specs[7]
    by_hand = resolve("digits-senseflow", ["train.iterations=30", "eval.num_samples=100", f"name={s.name}",
                                           "isg.enabled=false", "ida.enabled=true", "train.seed=1", "output.grid=g"])
    assert (s.name, s.seed) == ("w/o ISG (ida.enabled=true)", 1) and by_hand.identity_hash() == s.run_id


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(axis={"ida.enabled": [True]}), "unknown top-level key 'axis'; did you mean 'axes'?"),
    (lambda d: d["variants"][1]["overrides"].append("isg.wieght=2"),
     "cell 'w/o ISG (ida.enabled=false)' (seed 0): unknown key 'isg.wieght'; did you mean 'isg.weight'?"),
    (lambda d: d["variants"].append({"name": "bad lam", "overrides": {"ida.lam": 1.5}}),
     "cell 'bad lam (ida.enabled=false)' (seed 0): ida.lam=1.5: Input should be less than or equal to 1"),
    (lambda d: d.update(axes={"ida.lam": [0.9, 2]}), "cell 'full (ida.lam=2)' (seed 0): ida.lam=2:"),
    (lambda d: d.update(axes={"optim.tur": [1, 5]}), "axis 'optim.tur': unknown key 'optim.tur'; did you mean 'optim.ttur'?"),
    (lambda d: d.update(axes={"gan.kind": ["vfm", "stylegan"]}),
     "cell 'full (gan.kind=stylegan)' (seed 0): gan.kind='stylegan' is not allowed; expected one of"),
    (lambda d: d.update(axes={"ida.enabled": []}), "axis 'ida.enabled' must be a non-empty list"),
    (lambda d: d["variants"].append({"name": "full"}), "two variants are named 'full'"),
    (lambda d: d["variants"].append({"overrides": {"ida.lam": 0.9}}), "variant #4: every variant needs a non-empty `name`"),
    (lambda d: d["variants"][0].update(overides={}), "variant 'full': unknown key 'overides'; did you mean 'overrides'?"),
    (lambda d: d.update(seeds=[0, "one"]), "seeds=[0, 'one'] must be a non-empty list of integers"),
    (lambda d: d.update(base="digits-sensflow"), "did you mean 'digits-senseflow'?"),
    (lambda d: d["overrides"].update({"train.seed": 3}), "overrides may not set 'train.seed'"),
    (lambda d: d["variants"][1].update(overrides={"optim": {"ttur": 0}}), "cell 'w/o ISG (ida.enabled=false)' (seed 0): optim.ttur=0"),
])
def test_validation_errors_name_the_cell_and_key(tmp_path, change, expected):
    doc = grid_doc(tmp_path)
    change(doc)
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as e:
        load_grid(path)
    msg = str(e.value)
    assert expected in msg and "\n" not in msg and msg.startswith(str(path))
    assert not (tmp_path / "runs").exists()  # nothing starts before the whole file is valid


def test_plan_shows_new_done_partial_failed_and_running(tmp_path, capsys):
    path = write(tmp_path, grid_doc(tmp_path, axes={}, seeds=[0]))
    specs = load_grid(path).specs
    assert [cell_state(s).kind for s in specs] == ["new"] * 3
    for s, st in zip(specs, [{"state": "completed", "iteration": 30}, {"state": "running", "iteration": 20, "host": "node7"},
                             {"state": "diverged", "iteration": 12, "reason": "iteration 12: loss is nan"}]):
        s.run_dir.mkdir(parents=True)
        (s.run_dir / "status.json").write_text(json.dumps(st))
    assert main(["grid", "plan", str(path)]) == 0
    text = capsys.readouterr().out
    assert "done" in text and "partial(20/30, running on node7?)" in text and "diverged: iteration 12: loss is nan" in text
    assert "every run: train.iterations=30" in text and "isg.enabled=false" in text
    with run_lock(specs[1].run_dir):
        assert cell_state(specs[1]).kind == "running"
    assert cell_state(specs[1]).kind == "partial"
    (specs[1].run_dir / "status.json").write_text(json.dumps({"state": "running", "iteration": 20}))
    assert cell_state(specs[1]).describe() == "partial(20/30, interrupted)"  # no lock held here: it was killed


def test_plan_bad_file_is_one_line_exit_2(tmp_path, capsys):
    doc = grid_doc(tmp_path)
    doc["variants"][0]["overrides"] = {"isg.margin": 400}
    assert main(["grid", "plan", str(write(tmp_path, doc))]) == 2
    err = capsys.readouterr().err
    assert "cell 'full (ida.enabled=false)'" in err and "isg.margin=400" in err


@pytest.mark.parametrize("name, cells", [("paper/sd35-large-ablation.yaml", 4), ("paper/flux-dev.yaml", 4),
                                         ("paper/sdxl.yaml", 2), ("paper/disc-backbone.yaml", 3),
                                         ("digits/ablation.yaml", 5), ("digits/ablation-1step.yaml", 5),
                                         ("digits/hard.yaml", 8)])
def test_shipped_grids_plan_without_downloads(name, cells, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # plan must not create anything
    path = REPO / "experiments" / name
    grid = load_grid(path)
    assert len({s.name for s in grid.specs}) == cells
    assert main(["grid", "plan", str(path)]) == 0
    assert list(tmp_path.iterdir()) == []
    if name.startswith("paper/"):
        assert all(s.cfg.eval.num_samples == 5000 and s.cfg.eval.prompts.endswith("captions.txt") for s in grid.specs)


@pytest.mark.parametrize("name, anchors", [("ablation.yaml", [999, 749, 499, 249]), ("ablation-1step.yaml", [999])])
def test_shipped_digits_ablations_are_the_papers_form(name, anchors):
    grid = load_grid(REPO / "experiments/digits" / name)
    ab = {s.name: s.cfg for s in grid.specs if s.seed == 0}
    order = ["SenseFlow", "w/o ISG", "w/o IDA", "w/o IDA and ISG", "DMD2"]
    assert grid.cells == order and grid.compare_to == "SenseFlow"
    assert {s.seed for s in grid.specs} == {0, 1, 2, 3, 4}
    assert grid.paper["values"] == {"SenseFlow": 13.38, "w/o ISG": 17.0, "w/o IDA": 17.83, "w/o IDA and ISG": 43.84}
    assert [(ab[n].ida.enabled, ab[n].isg.enabled, ab[n].gan.kind) for n in order] == [
        (True, True, "vfm"), (True, False, "vfm"), (False, True, "vfm"), (False, False, "vfm"), (False, False, "dmd2")]
    assert all(c.generator.anchor_indices == anchors for c in ab.values())
    assert len({(c.train.iterations, c.train.eval_every, tuple(c.eval.samplers)) for c in ab.values()}) == 1

    def strip(c, *keys):
        d = c.to_dict()
        for k in ("name", "method", "preset", *keys):
            d.pop(k, None)
        return d
    # the four SenseFlow cells differ only in IDA and ISG: everything else (the VFM discriminator too) is equal
    for n in order[1:4]:
        assert strip(ab[n], "ida", "isg") == strip(ab["SenseFlow"], "ida", "isg")
        assert ab[n].isg.model_dump(exclude={"enabled"}) == ab["SenseFlow"].isg.model_dump(exclude={"enabled"})
        assert ab[n].ida.model_dump(exclude={"enabled"}) == ab["SenseFlow"].ida.model_dump(exclude={"enabled"})
    # DMD2 is DMD2's recipe: its head whose loss also trains the fake score's body, backward simulation always
    assert (ab["DMD2"].gan.train_fake_score_body, ab["DMD2"].generator.backsim_prob) == (True, 1.0)
    assert ab["DMD2"].method == "dmd2" and ab["SenseFlow"].method == "senseflow"


def test_shipped_grids_isolate_what_they_compare():
    hard = load_grid(REPO / "experiments/digits/hard.yaml").specs
    worst = [s.cfg for s in hard if s.name.startswith("ttur1 lrG=3x")]
    assert [(c.optim.ttur, round(c.optim.lr_generator / c.optim.lr_fake, 6), c.ida.enabled) for c in worst] == [(1, 3.0, False), (1, 3.0, True)]
    bb = {s.name: s.cfg.gan for s in load_grid(REPO / "experiments/paper/disc-backbone.yaml").specs}
    assert bb["DINOv2-B"].backbone == "facebook/dinov2-base" and max(bb["DINOv2-S"].layers) == 11
    assert max(bb["DINOv2-L"].layers) == 23
