"""Progress output: tqdm bars print plain lines off a terminal; `grid run` shows a live overview on one and
overview lines in logs."""

from __future__ import annotations

import io
import json
import re
from types import SimpleNamespace

import yaml
from rich.console import Console

from senseflow.progress import GridProgress, bar, cell_iteration


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_tqdm_bar_prints_plain_lines_off_terminal():
    log = io.StringIO()
    for _ in bar(range(50), desc="teacher", file=log, mininterval=0, miniters=10):
        pass
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 10 and lines[-1].startswith("teacher: 100%") and "50/50" in lines[-1]
    # a leave=False bar ends without an empty or carriage-return line
    log = io.StringIO()
    for _ in bar(range(5), desc="x", file=log, mininterval=0, leave=False):
        pass
    assert all(ln.strip() for ln in log.getvalue().splitlines()) and "\r" not in log.getvalue()
    # on a terminal it is an ordinary redrawing bar
    tty = _Tty()
    for _ in bar(range(5), desc="x", file=tty, mininterval=0):
        pass
    assert "\r" in tty.getvalue()


def _spec(tmp_path, name, iterations):
    run_dir = tmp_path / name
    run_dir.mkdir()
    return SimpleNamespace(run_id=name, label=f"{name} seed 0", run_dir=run_dir,
                           cfg=SimpleNamespace(train=SimpleNamespace(iterations=iterations)))


def _log(spec, iteration):
    with open(spec.run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": iteration, "loss_dmd": 0.5}) + "\n")


def test_cell_iteration_reads_status_and_metrics(tmp_path):
    s = _spec(tmp_path, "a", 100)
    assert cell_iteration(s.run_dir) == 0
    (s.run_dir / "status.json").write_text(json.dumps({"state": "running", "iteration": 40}))
    assert cell_iteration(s.run_dir) == 40
    _log(s, 30)
    _log(s, 55)
    assert cell_iteration(s.run_dir) == 55


def test_grid_overview_plain_lines_with_eta(tmp_path):
    now = [0.0]
    a, b, c = (_spec(tmp_path, n, 100) for n in "abc")
    log = io.StringIO()
    prog = GridProgress(Console(file=log, force_terminal=False, width=200), [a, b, c], clock=lambda: now[0])
    assert not prog.live
    with prog:
        prog.on_event("skip", c, state="skip:done")
        prog.on_event("submit", a, job_id="1")
        prog.on_event("submit", b, job_id="2")
        now[0] = 10.0
        _log(a, 30)
        _log(b, 10)
        prog.on_event("progress", a)
    line = log.getvalue().strip().splitlines()[-1]
    # 40 of 200 iterations in 10 s: 160 left at 4 it/s
    assert "1/3 runs done, 2 running, 40/200 iterations, ETA 40s" in line
    assert "a seed 0 30/100" in line and "b seed 0 10/100" in line
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()


def test_grid_overview_live_bars_on_terminal(tmp_path):
    now = [0.0]
    a, b = _spec(tmp_path, "a", 100), _spec(tmp_path, "b", 50)
    screen = io.StringIO()
    prog = GridProgress(Console(file=screen, force_terminal=True, width=120), [a, b], refresh_s=60,
                        clock=lambda: now[0])
    assert prog.live
    with prog:
        prog.on_event("submit", a, job_id="1")
        prog.on_event("submit", b, job_id="2")
        tasks = {t.description: t for t in prog.progress.tasks}
        assert set(tasks) == {"grid: 0/2 runs done", "a seed 0", "b seed 0"}  # one bar per running cell
        now[0] = 5.0
        _log(a, 50)
        prog.refresh()
        tasks = {t.description: t for t in prog.progress.tasks}
        assert tasks["a seed 0"].completed == 50 and tasks["a seed 0"].total == 100
        overall = tasks["grid: 0/2 runs done"]
        assert (overall.completed, overall.total) == (50, 150) and overall.fields["eta"] == "ETA 10s"
        prog.on_event("finish", a, state="completed", seconds=5.0)
        assert [t.description for t in prog.progress.tasks] == ["grid: 1/2 runs done", "b seed 0"]
        prog.print("  completed a")
    out = screen.getvalue()
    assert "grid: 1/2 runs done" in out and "completed a" in out and "\x1b" in out


def test_grid_run_in_a_log_has_overview_lines(tmp_path, capsys, monkeypatch):
    from senseflow.cli import main
    import senseflow.launch as launch_mod

    doc = {"grid": "prog", "allow_outside_results": True, "base": "digits-senseflow",
           "overrides": {"train.iterations": 40, "train.log_every": 5, "train.checkpoint_every": 20,
                         "output.root": str(tmp_path / "runs")},
           "variants": [{"name": "one"}, {"name": "two", "overrides": ["isg.weight=0.5"]}]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setattr(launch_mod, "PROGRESS_EVERY_S", 0.2)  # the 30 s overview tick, made quick
    assert main(["grid", "run", str(path), "--job", "smoke", "--no-sync", "--parallel", "2"]) == 0
    out = capsys.readouterr().out
    assert "\r" not in out
    overview = [ln for ln in out.splitlines() if "runs done" in ln]
    assert overview and all("/2 runs done" in ln and "ETA" in ln for ln in overview)
    assert sum(ln.strip().startswith("completed ") for ln in out.splitlines()) == 2


def test_live_display_fits_the_terminal(tmp_path, monkeypatch):
    # `grid run` prints tables on a 200-column console; its live bars must fit the real terminal or they wrap
    monkeypatch.setenv("COLUMNS", "80")
    screen = io.StringIO()
    with GridProgress(Console(file=screen, force_terminal=True, width=200), [_spec(tmp_path, "a", 10)],
                      refresh_s=60) as prog:
        assert prog.progress.console.width == 80 and prog.progress.console.file is screen
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # without the terminal's escape codes
    assert max(len(ln) for ln in text.replace("\r", "\n").splitlines()) <= 80
