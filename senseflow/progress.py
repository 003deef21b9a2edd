"""Progress display: live bars on a terminal, plain lines everywhere else (log files, SLURM output).

- `bar(iterable, **tqdm_kwargs)`: a tqdm bar; when its stream is not a terminal it prints one plain line at
  most every `LINE_INTERVAL_S` seconds (and a last one when it closes) instead of carriage-return redraws,
  so a log holds a few lines instead of megabytes of `\\r`.
- `GridProgress(console, specs)`: the overview of `senseflow grid run`. On a terminal a rich progress display:
  one bar for the whole grid (runs done / total, iterations, ETA) and one bar per running cell, refreshed
  every second from the run folders. Otherwise one overview line each time the launcher reports progress
  (every 30 s). Event lines (skip, start, finish) are printed above the bars or as plain lines.

A cell's iteration is the larger of status.json's (written at checkpoints) and the last metrics.jsonl row's
(written every `train.log_every` iterations). The ETA is the grid's remaining iterations divided by the
iterations per second done since the display started (evaluation time is not counted).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

LINE_INTERVAL_S = 30.0


def is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


class _Lines:
    """A stream for tqdm that turns each redraw ("\\r" + text) into one line and drops bare clears."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> None:
        text = s.replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def bar(iterable=None, **kwargs):
    """tqdm(iterable, **kwargs), in plain lines when its stream (default stderr) is not a terminal."""
    from tqdm.auto import tqdm

    stream = kwargs.get("file") or sys.stderr
    if kwargs.get("disable") or is_terminal(stream):
        return tqdm(iterable, **kwargs)
    kwargs["file"] = _Lines(stream)
    kwargs.pop("dynamic_ncols", None)
    kwargs.setdefault("mininterval", LINE_INTERVAL_S)
    kwargs.setdefault("ncols", 120)
    return tqdm(iterable, **kwargs)


# ----------------------------------------------------------------------------- grid overview
def cell_iteration(run_dir: Path) -> int:
    """Iterations a run has done, from status.json and the last metrics.jsonl row."""
    it = 0
    try:
        it = int(json.loads((run_dir / "status.json").read_text()).get("iteration") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    try:
        with open(run_dir / "metrics.jsonl", "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode("utf-8", "replace").splitlines()
        for line in reversed(tail):
            try:
                return max(it, int(json.loads(line)["iteration"]))
            except (ValueError, KeyError, TypeError):
                continue
    except OSError:
        pass
    return it


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


class GridProgress:
    """`on_event` for senseflow.launch.launch, plus `print` for event lines; use as a context manager."""

    def __init__(self, console, specs: list, *, refresh_s: float = 1.0, clock=time.monotonic):
        self.console = console
        self.live = bool(console.is_terminal)
        self.total_runs = len(specs)
        self.iterations = {s.run_id: int(s.cfg.train.iterations) for s in specs}
        self.done_runs = 0
        self.skipped: set[str] = set()
        self.active: dict[str, Any] = {}   # run_id -> spec
        self.current: dict[str, int] = {}  # run_id -> iterations done (finished runs: all)
        self.refresh_s = refresh_s
        self.clock = clock
        self.t0 = clock()
        self.start_iterations: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.progress = None
        self._tasks: dict[str, Any] = {}
        self._overall = None

    # --- numbers
    def total_iterations(self) -> int:
        return sum(v for k, v in self.iterations.items() if k not in self.skipped)

    def done_iterations(self) -> int:
        return sum(v for k, v in self.current.items() if k not in self.skipped)

    def eta_seconds(self) -> float | None:
        if self.start_iterations is None:
            return None
        gained = self.done_iterations() - self.start_iterations
        elapsed = self.clock() - self.t0
        if gained <= 0 or elapsed <= 0:
            return None
        return max(0, self.total_iterations() - self.done_iterations()) * elapsed / gained

    def summary(self) -> str:
        eta = self.eta_seconds()
        return (f"{self.done_runs}/{self.total_runs} runs done, {len(self.active)} running, "
                f"{self.done_iterations()}/{self.total_iterations()} iterations, ETA {fmt_seconds(eta)}")

    def _poll(self) -> None:
        for rid, spec in list(self.active.items()):
            self.current[rid] = min(self.iterations[rid], cell_iteration(Path(spec.run_dir)))
        if self.start_iterations is None:
            self.start_iterations = self.done_iterations()

    # --- events
    def print(self, *args, **kwargs) -> None:
        (self.progress.console if self.progress is not None else self.console).print(*args, **kwargs)

    def on_event(self, kind: str, spec, **info) -> None:
        with self._lock:
            if kind == "skip":
                self.skipped.add(spec.run_id)
                self.done_runs += 1
            elif kind == "submit":
                self.active[spec.run_id] = spec
                self.current[spec.run_id] = cell_iteration(Path(spec.run_dir))
                if self.start_iterations is None:
                    self.start_iterations = self.done_iterations()
                if self.progress is not None:
                    it = self.iterations[spec.run_id]
                    self._tasks[spec.run_id] = self.progress.add_task(spec.label, total=it,
                                                                      completed=self.current[spec.run_id], eta="")
            elif kind == "finish":
                self.active.pop(spec.run_id, None)
                self.done_runs += 1
                if info.get("state") == "completed":
                    self.current[spec.run_id] = self.iterations[spec.run_id]
                else:
                    self.current[spec.run_id] = cell_iteration(Path(spec.run_dir))
                    # a failed run will not add its remaining iterations: don't wait for them in the ETA
                    self.iterations[spec.run_id] = self.current[spec.run_id]
                task = self._tasks.pop(spec.run_id, None)
                if task is not None:
                    self.progress.remove_task(task)
            elif kind == "progress" and not self.live:
                self._poll()
                cells = ", ".join(f"{s.label} {self.current[r]}/{self.iterations[r]}" for r, s in self.active.items())
                self.console.print(f"  [{self.summary()}]" + (f"  {cells}" if cells else ""), markup=False)
        if self.progress is not None:
            self.refresh()

    # --- live display
    def refresh(self) -> None:
        with self._lock:
            self._poll()
            for rid, task in self._tasks.items():
                self.progress.update(task, completed=self.current[rid])
            self.progress.update(self._overall, total=max(1, self.total_iterations()),
                                 completed=self.done_iterations(),
                                 description=f"grid: {self.done_runs}/{self.total_runs} runs done",
                                 eta=f"ETA {fmt_seconds(self.eta_seconds())}")

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def _live_console(self):
        """The console, narrowed to the terminal when it was given a fixed larger width (lines longer than the
        terminal would wrap and break the live redraw)."""
        import shutil

        cols = shutil.get_terminal_size(fallback=(self.console.width, 24)).columns
        if self.console.width <= cols:
            return self.console
        from rich.console import Console

        return Console(file=self.console.file, width=cols, force_terminal=True, highlight=False, emoji=False)

    def __enter__(self) -> "GridProgress":
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[eta]}"), TimeElapsedColumn(),
                                     console=self._live_console(), transient=False)
            self._overall = self.progress.add_task("grid", total=max(1, self.total_iterations()), eta="")
            self.progress.start()
            self.refresh()
            self._thread = threading.Thread(target=self._loop, name="grid-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.progress is not None:
            self.refresh()
            self.progress.stop()
            self.progress = None
