"""Generated bad input through the command line: config overrides over the whole schema, config, grid and
sweep files, command-line arguments and SQL. Every case must end with exit status 2, at most 3 lines of
output, no traceback, and nothing created under the results root. The cases run in-process through
`senseflow.cli.main` (a handful through a real `python -m senseflow` for the entry point itself)."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel

from senseflow.cli import main
from senseflow.config import RunConfig
from senseflow.grid import TOP_LEVEL_KEYS as GRID_KEYS
from senseflow.sweep import TOP_LEVEL_KEYS as SWEEP_KEYS

REPO = Path(__file__).resolve().parents[1]


# ============================================================================ generators
def leaves(cls: type[BaseModel] = RunConfig, prefix: str = ""):
    """(dotted key, annotation, constraints) of every leaf field of the config schema."""
    for name, f in cls.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from leaves(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", ann, f.metadata


def _bounds(meta) -> list[str]:
    out = []
    for m in meta:
        if isinstance(m, Ge):
            out.append(str(m.ge - 1))
        elif isinstance(m, Gt):
            out.append(str(m.gt if not isinstance(m.gt, float) else m.gt - 1.0))
        elif isinstance(m, Le):
            out.append(str(m.le + 1))
        elif isinstance(m, Lt):
            out.append(str(m.lt))
    return out


def bad_values(ann: Any, meta) -> list[str]:
    """Values (as typed after key=) that no field of this type accepts."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is float:
        return ["inf", "nan", "-.inf", "abc", "[1, 2]", *_bounds(meta)]
    if ann is int:
        return ["1.5", "abc", "[1]", "inf", *_bounds(meta)]
    if ann is bool:
        return ["maybe", "[true]", "2"]
    if ann is str:
        return ["[1, 2]", "{a: 1}"]
    if origin is Literal:
        return ["bogus_value", "[1]"]
    if origin is list:
        inner = args[0]
        return ["abc", "{a: 1}", *([f"[{v}]" for v in bad_values(inner, ())[:2] if not v.startswith("[")])]
    if origin is tuple:
        return ["[1]", "abc", "[0.5, inf]"]
    if origin is dict:
        return ["abc", "[1]"]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        return [v for v in bad_values(inner[0], meta) if v not in ("[1]", "{a: 1}")][:3]
    raise AssertionError(f"no generator for {ann}")


def typo(key: str) -> str:
    *head, last = key.split(".")
    return ".".join([*head, last[:-1] + "q" if len(last) > 2 else last + "zz"])


SCHEMA_CASES = [(key, v) for key, ann, meta in leaves() for v in bad_values(ann, meta)]
SCHEMA_CASES += [(typo(key), "1") for key, _, _ in leaves()]
# cross-field and semantic checks
SCHEMA_CASES += [("eval.metrics", "[fid_tt]"), ("eval.metrics", "[fid_t, bogus]"), ("eval.samplers", "[ddim]"),
                 ("eval.weights", "{incepton: /x}"), ("eval.weights", "{clip: /x}"), ("gan.layers", "[4]"),
                 ("gan.layers", "[0, 0]"), ("gan.layers", "[-5]"), ("gan.layers", "[]"),
                 ("isg.margin", "400"), ("generator.anchor_indices", "[249, 999]"), ("guidance.low", "1"),
                 ("dmd.guidance", "{low: 5, high: 1}"), ("model.family", "sd4")]


def _yaml_files(tmp: Path) -> list[tuple[str, str]]:
    """(name, text) of config files that must be refused."""
    deep = "a: " * 3000 + "1\n"
    return [("empty.yaml", ""), ("comment.yaml", "# nothing here\n"), ("list.yaml", "- a\n- b\n"),
            ("scalar.yaml", "42\n"), ("dup.yaml", "preset: digits-senseflow\nisg:\n  weight: 1\n  weight: 2\n"),
            ("dup_top.yaml", "preset: digits-senseflow\npreset: digits-dmd2\n"), ("deep.yaml", deep),
            ("deep_flow.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n"), ("bad.yaml", "a: [1, 2\n"),
            ("tabs.yaml", "a:\n\tb: 1\n"), ("unknown.yaml", "preset: digits-senseflow\nisg: {wieght: 1}\n"),
            ("badpreset.yaml", "preset: digits-sensefow\n"), ("presetnum.yaml", "preset: 5\n"),
            ("inf.yaml", "preset: digits-senseflow\noptim: {lr_generator: .inf}\n"),
            ("binary.yaml", "\x00\x01\x02")]


VALID_GRID = {"grid": "g", "base": "digits-senseflow", "seeds": [0], "overrides": {"train.iterations": 10},
              "variants": [{"name": "A"}]}


def grid_mutations() -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []

    def mut(label: str, **changes):
        doc = yaml.safe_load(yaml.safe_dump(VALID_GRID))
        for k, v in changes.items():
            if v is _DROP:
                doc.pop(k, None)
            else:
                doc[k] = v
        out.append((label, doc))

    for k in GRID_KEYS:
        mut(f"typo-{k}", **{typo(k): 1})
    for v in ("", "  ", "a/b", ".hidden", 5, [1]):
        mut(f"grid={v!r}", grid=v)
    for v in ([], "x", [0, 0], [True], 1.5, [1.5], {"a": 1}):
        mut(f"seeds={v!r}", seeds=v)
    for v in ("x", {"ida.enabled": []}, {"ida.enabled": "x"}, {"nosuch.key": [1]}, {"name": ["a"]},
              {"train.seed": [1]}, {"isg.weight": ["inf"]}, {"ida.lam": [2.0]}):
        mut(f"axes={v!r}", axes=v)
    for v in ([], "x", [1], [{"name": ""}], [{"name": "A"}, {"name": "A"}], [{"name": "A", "bogus": 1}],
              [{"name": "A", "overrides": 5}], [{"name": "A", "base": "nosuchpreset"}],
              [{"name": "A", "overrides": {"name": "x"}}], [{"name": "A", "seeds": []}],
              [{"name": "A", "overrides": {"output.grid": "x"}}]):
        mut(f"variants={v!r}", variants=v)
    for v in ("nosuchpreset", 5, "missing.yaml", {"isg": {"wieght": 1}}):
        mut(f"base={v!r}", base=v)
    for v in (5, [1]):
        mut(f"db={v!r}", db=v)
    for v in ("yes", 1, "true"):
        mut(f"allow_outside_results={v!r}", allow_outside_results=v)
    for v in ("/tmp/elsewhere/runs", "../outside/runs", "results/../../x"):
        mut(f"output.root={v}", overrides={"output.root": v})
    for v in (5, "x", ["nokey"], {"train.seed": 3}, {"name": "x"}, {"eval": 5}):
        mut(f"overrides={v!r}", overrides=v)
    mut("eval=5", eval=5)
    mut("eval typo", eval={"num_samplez": 5})
    # every field of the schema, set to its first bad value by the grid's overrides
    seen = set()
    for key, v in SCHEMA_CASES:
        if key not in seen and not key.startswith(("output.", "name")) and key != "train.seed":
            seen.add(key)
            mut(f"override {key}={v}", overrides={key: yaml.safe_load(v)})
    return out


_DROP = object()

VALID_SWEEP = {"sweep": "s", "base": "digits-senseflow", "params": {"ida.lam": {"type": "float", "low": 0.9, "high": 0.99}},
               "objectives": [{"metric": "fid_t"}], "trials": 2}


def sweep_mutations() -> list[tuple[str, dict]]:
    out = []

    def mut(label, **changes):
        doc = yaml.safe_load(yaml.safe_dump(VALID_SWEEP))
        doc.update(changes)
        out.append((label, doc))

    for k in SWEEP_KEYS:
        mut(f"typo-{k}", **{typo(k): 1})
    for v in ("", "a/b", 5):
        mut(f"sweep={v!r}", sweep=v)
    for v in ({"ida.lam": {"type": "float", "low": 0.99, "high": 0.9}}, {"ida.lam": {"type": "flaot", "low": 0, "high": 1}},
              {"nosuch.key": {"type": "float", "low": 0, "high": 1}}, {"ida.lam": {"type": "float", "low": 0, "high": 2}},
              {"ida.lam": {"type": "float", "low": "nan", "high": 1}}, {"ida.lam": 5}, {},
              {"optim.ttur": {"type": "int", "low": 0, "high": 4}},
              {"gan.kind": {"type": "categorical", "choices": ["vfm", "stylegan"]}}):
        mut(f"params={v!r}", params=v)
    for v in ([{"metric": "fid_t", "direction": "down"}], [], "fid_t", [{"metrc": "fid_t"}]):
        mut(f"objectives={v!r}", objectives=v)
    for v in (0, -1, "x"):
        mut(f"trials={v!r}", trials=v)
    return out


CLI_CASES: list[list[str]] = [
    ["--bogus"], ["nosuch"], ["trian"], ["train"], ["train", "--bogus"], ["config", "show"],
    ["config", "shw"], ["config", "show", "digits-sensflow"], ["config", "show", "nosuch.yaml"],
    ["config", "show", "digits-senseflow", "isg.weight"], ["config", "show", "digits-senseflow", "=1"],
    ["config", "show", "digits-senseflow", "isg..weight=1"], ["config", "show", "digits-senseflow", "isg.weight=[1"],
    ["train", "digits-senseflow", "--stop-after", "x"], ["train", "digits-senseflow", "--run-dir"],
    ["train", "digits-senseflow", "--run-dir", "/proc/x/run"], ["train", "digits-senseflow", "train.iterations=0"],
    ["sample"], ["sample", "{tmp}/nope", "-p", "x"], ["sample", "{tmp}/nope", "-p", "x", "--sampler", "ddim"],
    ["sample", "{tmp}/nope", "-p", "x", "--steps", "0"], ["sample", "{tmp}/nope", "-p", "x", "--n", "0"],
    ["sample", "{tmp}/nope"], ["export", "{tmp}/nope"], ["export", "{tmp}/nope", "{tmp}/out"],
    ["eval", "{tmp}/nope"], ["eval", "{tmp}", "--num-samples", "x"],
    ["grid", "plan"], ["grid", "plan", "{tmp}/nope.yaml"], ["grid", "plna", "x"],
    ["grid", "run", "experiments/digits/ablation.yaml", "--executor", "slurmx"],
    ["grid", "run", "experiments/digits/ablation.yaml", "--parallel", "abc"],
    ["grid", "run", "experiments/digits/ablation.yaml", "--only", "nosuchcell"],
    ["grid", "status", "experiments/digits/ablation.yaml", "--only", "nosuchcell"],
    ["results", "query"], ["results", "query", "select 1", "--format", "xml"], ["results", "tabel", "g"],
    ["results", "query", "select 1", "--root", "{tmp}/noresults"], ["sweep", "show", "{tmp}/nope.yaml"],
    ["sweep", "run", "experiments/sweeps/digits-ida-isg.yaml", "--trials", "x"],
    ["world", "digits", "build", "--set", "teacher.stepz=1"], ["world", "nosuch"],
]

SQL_CASES = [
    "copy runs to '{tmp}/x.csv'", "copy (select 1) to '{tmp}/y.parquet' (format parquet)",
    "select * from read_csv('/etc/passwd')", "select * from read_text('/etc/hostname')",
    "select * from '/etc/passwd'", "select * from read_json_auto('{tmp}/z.json')",
    "select * from read_parquet('https://example.com/x.parquet')", "install httpfs", "load httpfs",
    "attach '{tmp}/other.duckdb' as o", "detach senseflow", "create table t as select 1",
    "insert into runs select * from runs", "delete from runs", "update runs set seed = 1", "drop table runs",
    "alter table runs add column x int", "pragma enable_profiling", "set enable_external_access = true",
    "set lock_configuration = false", "reset lock_configuration", "export database '{tmp}/dump'",
    "import database '{tmp}/dump'", "checkpoint", "vacuum", "begin transaction", "call pragma_version()",
    "select 1; select 2", "select 1; drop table runs", "", "   ", "selct 1", "select * from runz",
    "select nosuchcolumn from runs", "select * from runs where", "select 1/'a'",
    "select * from glob('/etc/*')", "select getenv('HOME')", "create macro m() as 1", "use memory",
    "create secret (type s3)", "copy runs from '{tmp}/x.csv'", "summarize runs; select 1",
]


# ============================================================================ harness
def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@pytest.fixture(scope="module")
def _sandbox_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    (work / "results" / "runs").mkdir(parents=True)
    from evals.store import sync

    sync(work / "results", work / "results" / "senseflow.duckdb")
    for name in ("experiments", "slurm"):
        (work / name).symlink_to(REPO / name)
    return work


@pytest.fixture
def sandbox(_sandbox_dir, monkeypatch):
    """cwd = a folder whose results/ holds an empty synced store (shared by the cases: each one checks that
    it left results/ exactly as it found it)."""
    monkeypatch.chdir(_sandbox_dir)
    return _sandbox_dir


def run_cli(argv: list[str], work: Path, capsys) -> None:
    before = _tree(work / "results")
    argv = [a.replace("{tmp}", str(work)) for a in argv]
    rc = main(argv)
    out = capsys.readouterr()
    text = out.out + out.err
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert "Traceback" not in text, text
    assert rc == 2, f"{argv}: exit {rc}\n{text}"
    assert len(lines) == 1, f"{argv}: {len(lines)} lines\n{text}"
    assert _tree(work / "results") == before, f"{argv} created {_tree(work / 'results') - before}"


# ============================================================================ the cases
@pytest.mark.parametrize("key,value", SCHEMA_CASES, ids=[f"{k}={v}" for k, v in SCHEMA_CASES])
def test_bad_override(key, value, sandbox, capsys):
    run_cli(["config", "show", "digits-senseflow", f"{key}={value}"], sandbox, capsys)


@pytest.mark.parametrize("key,value", SCHEMA_CASES[::7], ids=[f"{k}={v}" for k, v in SCHEMA_CASES[::7]])
def test_bad_override_to_train_creates_nothing(key, value, sandbox, capsys):
    run_cli(["train", "digits-senseflow", f"{key}={value}", "--no-progress"], sandbox, capsys)


CONFIG_ONLY = ("unknown.yaml", "badpreset.yaml", "presetnum.yaml", "inf.yaml")  # config keys, not grid keys
YAML_CASES = [(cmd, name) for cmd in (["config", "show"], ["train"], ["grid", "plan"], ["sweep", "show"])
              for name, _ in _yaml_files(Path(".")) if not (cmd[0] == "grid" and name in CONFIG_ONLY)]


@pytest.mark.parametrize("command,name", YAML_CASES, ids=[f"{' '.join(c)} {n}" for c, n in YAML_CASES])
def test_bad_yaml_file(command, name, sandbox, capsys):
    text = dict(_yaml_files(sandbox))[name]
    p = sandbox / name
    p.write_bytes(text.encode("latin-1") if name == "binary.yaml" else text.encode())
    run_cli([*command, str(p)], sandbox, capsys)


GRID_CASES = grid_mutations()


@pytest.mark.parametrize("label,doc", GRID_CASES, ids=[label for label, _ in GRID_CASES])
def test_bad_grid(label, doc, sandbox, capsys):
    p = sandbox / "grid.yaml"
    p.write_text(yaml.safe_dump(doc))
    run_cli(["grid", "plan", str(p)], sandbox, capsys)


def test_valid_grid_and_sweep_pass(sandbox, capsys):
    """The mutations start from files that are accepted (so each case fails for its own reason)."""
    (sandbox / "grid.yaml").write_text(yaml.safe_dump(VALID_GRID))
    assert main(["grid", "plan", str(sandbox / "grid.yaml")]) == 0
    from senseflow.sweep import load_sweep

    load_sweep(VALID_SWEEP)
    capsys.readouterr()


SWEEP_CASES = sweep_mutations()


@pytest.mark.parametrize("label,doc", SWEEP_CASES, ids=[label for label, _ in SWEEP_CASES])
def test_bad_sweep(label, doc, sandbox, capsys):
    p = sandbox / "sweep.yaml"
    p.write_text(yaml.safe_dump(doc))
    run_cli(["sweep", "show", str(p)], sandbox, capsys)


@pytest.mark.parametrize("argv", CLI_CASES, ids=[" ".join(a) for a in CLI_CASES])
def test_bad_arguments(argv, sandbox, capsys):
    run_cli(argv, sandbox, capsys)


@pytest.mark.parametrize("sql", SQL_CASES)
def test_bad_sql(sql, sandbox, capsys):
    run_cli(["results", "query", sql], sandbox, capsys)
    assert not any(sandbox.glob("x.csv")) and not (sandbox / "dump").exists() and not (sandbox / "other.duckdb").exists()


def test_generated_suite_is_large():
    n = (len(SCHEMA_CASES) + len(SCHEMA_CASES[::7]) + len(YAML_CASES) + len(GRID_CASES)
         + len(SWEEP_CASES) + len(CLI_CASES) + len(SQL_CASES))
    assert n >= 300, n


# ============================================================================ the entry point itself
def _no_slurm() -> None:
    import shutil

    if shutil.which("sbatch") or shutil.which("srun"):
        pytest.skip("SLURM is installed here: this case would submit the grid")


@pytest.mark.parametrize("argv", [["grid", "run", "experiments/digits/ablation.yaml", "--executor", "slurm"],
                                  ["sweep", "run", "experiments/sweeps/digits-ida-isg.yaml", "--executor", "slurm"]])
def test_slurm_executor_without_slurm(argv, sandbox, capsys):
    _no_slurm()
    run_cli(argv, sandbox, capsys)


@pytest.mark.parametrize("argv", [["--bogus"], ["train"], ["config", "show", "digits-senseflow", "optim.lr_generator=inf"],
                                  ["results", "query", "copy runs to 'x.csv'"],
                                  ["grid", "run", "experiments/digits/ablation.yaml", "--executor", "slurm"]])
def test_entry_point(argv, sandbox):
    if "slurm" in argv:
        _no_slurm()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "senseflow", *argv], cwd=sandbox, env=env, capture_output=True,
                       text=True, timeout=120)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert r.returncode == 2 and 1 <= len(lines) <= 3 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert not (sandbox / "x.csv").exists()


def test_help_and_version(capsys):
    assert main(["-h"]) == 0 and "Usage" in capsys.readouterr().out
    assert main(["grid", "plan", "-h"]) == 0 and "grid plan" in capsys.readouterr().out
    from senseflow import __version__

    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"senseflow {__version__}"
    assert main([]) == 2  # a bare `senseflow` shows the help, as click does, with the usage-error status
    bare = capsys.readouterr()
    assert "Usage" in bare.out + bare.err and "grid" in bare.out + bare.err
