"""Results store: each run writes its own files atomically; DuckDB reads them all (`sync`).

Run folder ``results/runs/<grid>/<run_id>/`` (its files and status.json are senseflow.run_folder's):

* ``config.yaml``   the resolved config (any YAML mapping)
* ``status.json``   ``{"run_id", "grid", "variant", "seed", "state", "reason", "started", "finished",
  "iteration", "code_version", "host", ...}``; state is a `senseflow.run_folder.State`; times are
  Unix seconds (ISO-8601 strings are accepted when reading)
* ``metrics.jsonl`` one JSON object per line: ``{"iteration": int, "time": float (s), <name>: float, ...}``
* ``eval.json``     ``{"evaluations": [{"iteration", "label", "metrics": {name: float},
  "intervals": {name: [lo, hi]}, "num_samples", "checkpoint"}]}``

Writers never leave a half-written JSON file (temp file + fsync + ``os.replace``), and JSONL lines
are appended with one ``write`` under an exclusive ``flock``. Many jobs can finish at once: nothing
shares a database writer.

`sync(results_root, db_path)` rebuilds ``results/senseflow.duckdb`` from the folders (into a temp
file that then replaces the old one, so readers never see a half-built database and the file can
be deleted at any time). Tables:

* ``runs(run_id, grid, variant, seed, state, reason, iteration, started, finished, config JSON,
  run_dir, code_version, host, status JSON, current)`` one row per run folder; ``current`` is false for a
  run left in a grid's folder that the grid file no longer defines (e.g. made before its iterations were
  changed): tables and plots leave those out
* ``train_metrics(run_id, grid, iteration, time, name, value)`` long format; nested dicts are
  flattened to ``a/b``; if an iteration was logged twice (resume) the last line wins
* ``eval_metrics(run_id, grid, iteration, label, name, value, lo, hi, num_samples, checkpoint)``
* ``grids(grid, position, variant, compare_to, paper_metric, paper_value, paper_source)`` one row per cell
  of every grid folder with a manifest ``grid.json`` (written by `senseflow grid run`): the file's cell
  order, the cell paired differences are taken against, and the paper's value of a metric (see
  evals.grid_view)

Broken files or lines are skipped with a warning; sync never fails because of one run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import math
import os
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import yaml

from senseflow.run_folder import (CONFIG_FILE, EVAL_FILE, METRICS_FILE, STATUS_FILE, State, lock, run_path,
                                  write_json_atomic, write_status, write_text_atomic)
from senseflow.run_folder import dumps as _dumps

__all__ = [
    "DEFAULT_DB", "append_jsonl", "write_config", "read_json", "log_metrics", "record_eval", "read_evals",
    "init_run", "sync", "query", "QueryError",
]

DEFAULT_DB = "senseflow.duckdb"


# ============================================================================ small helpers
def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (created if needed) for read-modify-write sections (sweeps' study
    files; a run folder's files use senseflow.run_folder.lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ============================================================================ appending
def append_jsonl(path: str | os.PathLike, obj: Mapping[str, Any], *, fsync: bool = False) -> None:
    """Append one JSON line with a single ``write`` on an O_APPEND descriptor under ``flock``.

    Concurrent appenders (processes or threads) never interleave within a line, and a line left
    unterminated by a crash is closed first so it cannot corrupt the new record.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (_dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")
    if b"\n" in line[:-1]:
        raise ValueError("a JSONL record must not contain a raw newline")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a torn write (crash mid-line) must not swallow this record
        view = memoryview(line)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if fsync:
            os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_json(path: str | os.PathLike) -> Any:
    """Parsed JSON of ``path`` or None when it is missing or unreadable (a warning is issued then)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError, UnicodeDecodeError) as e:
        warnings.warn(f"{path}: unreadable JSON, skipped ({e})", stacklevel=2)
        return None


# ============================================================================ run files
def write_config(run: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """Write the resolved config mapping as ``config.yaml`` (atomic). Returns its path."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    path = Path(run) / CONFIG_FILE
    plain = json.loads(_dumps(config))  # numpy / Path values -> plain YAML types
    write_text_atomic(path, yaml.safe_dump(plain, sort_keys=False))
    return path


def init_run(results_root: str | os.PathLike, grid: str, run_id: str, config: Mapping[str, Any], *,
             variant: str | None = None, seed: int | None = None, **fields: Any) -> Path:
    """Create the run folder with config.yaml and a 'pending' status.json. Returns the folder."""
    run = run_path(Path(results_root) / "runs", grid, run_id)
    run.mkdir(parents=True, exist_ok=True)
    write_config(run, config)
    write_status(run, State.PENDING, run_id=run_id, grid=grid, variant=variant, seed=seed, iteration=0, **fields)
    return run


def log_metrics(run: str | os.PathLike, iteration: int, metrics: Mapping[str, float], *, time: float) -> None:
    """Append ``{"iteration", "time", **metrics}`` to metrics.jsonl (``time``: seconds since the run started)."""
    row: dict[str, Any] = {"iteration": int(iteration), "time": float(time)}
    for k, v in metrics.items():
        if k in row:
            raise ValueError(f"metric name {k!r} is reserved")
        row[k] = v
    append_jsonl(Path(run) / METRICS_FILE, row)


def read_evals(run: str | os.PathLike) -> list[dict[str, Any]]:
    """The evaluation entries of eval.json ([] when missing or unreadable)."""
    doc = read_json(Path(run) / EVAL_FILE)
    if isinstance(doc, dict) and isinstance(doc.get("evaluations"), list):
        return [e for e in doc["evaluations"] if isinstance(e, dict)]
    return []


def record_eval(run: str | os.PathLike, *, iteration: int, label: str, metrics: Mapping[str, float],
                intervals: Mapping[str, Sequence[float]] | None = None, num_samples: int | None = None,
                checkpoint: str | os.PathLike | None = None, **extra: Any) -> dict[str, Any]:
    """Add one evaluation to eval.json (atomic, locked); an entry with the same (iteration, label) is replaced.

    ``metrics``: name -> value; ``intervals``: name -> [lo, hi] (95 %); ``label``: e.g. 'final' or
    'iter_5000' or 'final@euler'. Returns the entry written.
    """
    entry: dict[str, Any] = {
        "iteration": int(iteration), "label": str(label),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "intervals": {k: [float(v[0]), float(v[1])] for k, v in (intervals or {}).items()},
        "num_samples": None if num_samples is None else int(num_samples),
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "time": _now_iso(), **extra,
    }
    run = Path(run)
    with lock(run):
        evals = [e for e in read_evals(run) if not (e.get("iteration") == entry["iteration"]
                                                    and e.get("label") == entry["label"])]
        evals.append(entry)
        evals.sort(key=lambda e: (int(e.get("iteration") or 0), str(e.get("label"))))
        write_json_atomic(run / EVAL_FILE, {"evaluations": evals})
    return entry


# ============================================================================ sync
_RUNS_COLS = ["run_id", "grid", "variant", "seed", "state", "reason", "iteration", "started", "finished",
              "config", "run_dir", "code_version", "host", "status", "current"]
_SCHEMA = {
    "runs": """CREATE TABLE runs (run_id VARCHAR, grid VARCHAR, variant VARCHAR, seed BIGINT, state VARCHAR,
               reason VARCHAR, iteration BIGINT, started TIMESTAMP, finished TIMESTAMP, config JSON,
               run_dir VARCHAR, code_version VARCHAR, host VARCHAR, status JSON, current BOOLEAN)""",
    "train_metrics": """CREATE TABLE train_metrics (run_id VARCHAR, grid VARCHAR, iteration BIGINT, time DOUBLE,
                        name VARCHAR, value DOUBLE)""",
    "eval_metrics": """CREATE TABLE eval_metrics (run_id VARCHAR, grid VARCHAR, iteration BIGINT, label VARCHAR,
                       name VARCHAR, value DOUBLE, lo DOUBLE, hi DOUBLE, num_samples BIGINT, checkpoint VARCHAR)""",
    "grids": """CREATE TABLE grids (grid VARCHAR, position BIGINT, variant VARCHAR, compare_to VARCHAR,
                paper_metric VARCHAR, paper_value DOUBLE, paper_source VARCHAR)""",
}
GRID_MANIFEST = "grid.json"


def _read_manifests(runs_root: Path, counts: dict[str, int]) -> tuple[list[tuple], dict[str, set[str]]]:
    """(``grids`` rows, grid -> the run ids its manifest lists)."""
    rows, members = [], {}
    for path in sorted(runs_root.glob(f"*/{GRID_MANIFEST}")) if runs_root.is_dir() else []:
        try:
            m = json.loads(path.read_text())
            paper = m.get("paper") or {}
            values = paper.get("values") or {}
            for i, cell in enumerate(m["cells"]):
                value = values.get(cell)
                rows.append((str(m["grid"]), i, str(cell), m.get("compare_to"), paper.get("metric"),
                             None if value is None else float(value), paper.get("source")))
            if "run_ids" in m:
                members[str(m["grid"])] = {str(r) for r in m["run_ids"]}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            _warn(f"{path}: skipped ({type(exc).__name__}: {exc})", counts)
    return rows, members


def _current(row: tuple, members: dict[str, set[str]]) -> bool:
    """A run belongs to its grid as the grid file now defines it: the grid has no manifest, the manifest lists
    the run, or the run is a reference row (config method: reference)."""
    run_id, grid, config = row[0], row[1], row[9]
    if grid not in members or run_id in members[grid]:
        return True
    try:
        return isinstance(config, str) and json.loads(config).get("method") == "reference"
    except (ValueError, AttributeError):
        return False


def _warn(msg: str, counts: dict[str, int], key: str = "skipped_files") -> None:
    counts[key] = counts.get(key, 0) + 1
    warnings.warn(msg, stacklevel=3)


def _as_int(v: Any) -> int | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) else None


def _as_float(v: Any) -> float | None:
    if v is None or isinstance(v, (str, bytes)):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _as_time(v: Any) -> _dt.datetime | None:
    """ISO string or Unix seconds -> naive UTC datetime."""
    if v in (None, ""):
        return None
    try:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return _dt.datetime.fromtimestamp(float(v), _dt.timezone.utc).replace(tzinfo=None)
        t = _dt.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
        if t.tzinfo is not None:
            t = t.astimezone(_dt.timezone.utc).replace(tzinfo=None)
        return t
    except (ValueError, OverflowError, OSError):
        return None


def _flatten(prefix: str, v: Any, out: dict[str, float]) -> None:
    if isinstance(v, Mapping):
        for k, x in v.items():
            _flatten(f"{prefix}/{k}" if prefix else str(k), x, out)
        return
    f = _as_float(v)
    if f is not None:
        out[prefix] = f


def _find_runs(results_root: Path) -> list[Path]:
    """Run folders under ``<results_root>/runs``: any folder holding a run file; the grid is the path
    between ``runs/`` and the run folder (so grids like ``digits/ablation`` nest). Hidden folders and
    the inside of run folders (checkpoints, samples) are not searched."""
    base = results_root / "runs"
    if not base.is_dir():
        return []
    markers = (STATUS_FILE, CONFIG_FILE, METRICS_FILE, EVAL_FILE)
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if here != base and here.parent != base and any(m in filenames for m in markers):
            found.append(here)
            dirnames[:] = []
    return sorted(found)


def _read_run(run: Path, base: Path, counts: dict[str, int]):
    """(runs row, train rows, eval rows) of one run folder; broken parts are skipped with warnings."""
    grid_name = run.parent.relative_to(base).as_posix()
    status = read_json(run / STATUS_FILE)
    status = status if isinstance(status, dict) else None
    if status is None and (run / STATUS_FILE).exists():
        counts["skipped_files"] = counts.get("skipped_files", 0) + 1
    status = status or {}
    config = None
    if (run / CONFIG_FILE).is_file():
        try:
            config = yaml.safe_load((run / CONFIG_FILE).read_text(encoding="utf-8"))
            if config is not None and not isinstance(config, dict):
                raise ValueError(f"top level is a {type(config).__name__}, not a mapping")
        except (yaml.YAMLError, ValueError, OSError, UnicodeDecodeError) as e:
            _warn(f"{run / CONFIG_FILE}: unreadable config, skipped ({e})", counts)
            config = None
    cfg = config or {}
    run_id = str(status.get("run_id") or run.name)
    grid = str(status.get("grid") or grid_name)
    variant = status.get("variant")
    if variant is None:
        variant = cfg.get("variant", cfg.get("name"))
    seed = status.get("seed")
    if seed is None:
        seed = cfg.get("seed", (cfg.get("train") or {}).get("seed") if isinstance(cfg.get("train"), dict) else None)

    # training metrics: last line per (iteration, name) wins
    train: dict[tuple[int, str], tuple[float | None, float]] = {}
    last_iter = None
    mpath = run / METRICS_FILE
    if mpath.is_file():
        try:
            with open(mpath, "r", encoding="utf-8", errors="replace") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                        if not isinstance(rec, dict):
                            raise ValueError("not an object")
                        it = _as_int(rec.get("iteration"))
                        if it is None:
                            raise ValueError("no integer 'iteration'")
                    except ValueError as e:
                        _warn(f"{mpath}:{n}: unreadable line, skipped ({e})", counts, "skipped_lines")
                        continue
                    t = _as_float(rec.get("time"))
                    vals: dict[str, float] = {}
                    for k, v in rec.items():
                        if k not in ("iteration", "time"):
                            _flatten(str(k), v, vals)
                    for k, v in vals.items():
                        train[(it, k)] = (t, v)
                    last_iter = it if last_iter is None else max(last_iter, it)
        except OSError as e:
            _warn(f"{mpath}: unreadable, skipped ({e})", counts)
    train_rows = [(run_id, grid, it, t, k, v) for (it, k), (t, v) in sorted(train.items())]

    eval_rows = []
    doc = read_json(run / EVAL_FILE)
    if doc is None and (run / EVAL_FILE).exists():
        counts["skipped_files"] = counts.get("skipped_files", 0) + 1
    elif doc is not None and not (isinstance(doc, dict) and isinstance(doc.get("evaluations"), list)):
        _warn(f"{run / EVAL_FILE}: no 'evaluations' list, skipped", counts)
    elif doc is not None:
        for n, e in enumerate(doc["evaluations"]):
            if not isinstance(e, dict) or not isinstance(e.get("metrics"), dict) or _as_int(e.get("iteration")) is None:
                _warn(f"{run / EVAL_FILE}: evaluation #{n} malformed, skipped", counts, "skipped_lines")
                continue
            ints = e.get("intervals") if isinstance(e.get("intervals"), dict) else {}
            for name, v in e["metrics"].items():
                val = _as_float(v)
                if val is None:
                    continue
                iv = ints.get(name)
                lo = hi = None
                if isinstance(iv, (list, tuple)) and len(iv) == 2:
                    lo, hi = _as_float(iv[0]), _as_float(iv[1])
                eval_rows.append((run_id, grid, _as_int(e.get("iteration")), str(e.get("label", "")), str(name),
                                  val, lo, hi, _as_int(e.get("num_samples")),
                                  None if e.get("checkpoint") is None else str(e.get("checkpoint"))))

    iteration = _as_int(status.get("iteration"))
    if iteration is None:
        iteration = last_iter
    run_row = (run_id, grid, None if variant is None else str(variant), _as_int(seed),
               None if status.get("state") is None else str(status.get("state")),
               None if status.get("reason") is None else str(status.get("reason")), iteration,
               _as_time(status.get("started")), _as_time(status.get("finished")),
               None if config is None else _dumps(config), str(run.resolve()),
               None if status.get("code_version") is None else str(status.get("code_version")),
               None if status.get("host") is None else str(status.get("host")),
               _dumps(status) if status else None)
    return run_row, train_rows, eval_rows


def _columns(rows: list[tuple], names: list[str], kinds: dict[str, str]) -> dict[str, np.ndarray]:
    """Row tuples -> dict of numpy columns (float64 for exact-valued doubles, object elsewhere: None -> NULL)."""
    cols = list(zip(*rows)) if rows else [()] * len(names)
    out = {}
    for name, col in zip(names, cols):
        if kinds.get(name) == "f8":
            out[name] = np.asarray(col, dtype=np.float64)
        else:
            arr = np.empty(len(col), dtype=object)
            arr[:] = list(col)
            out[name] = arr
    return out


def sync(results_root: str | os.PathLike = "results", db_path: str | os.PathLike | None = None) -> dict[str, int]:
    """Rebuild the DuckDB file from every run folder under ``<results_root>/runs/<grid>/<run_id>/``.

    Idempotent (same folders -> same rows), safe to run while jobs write (it reads only complete
    files; a half-written JSONL line is skipped with a warning), and the database can be deleted and
    rebuilt at any time. Returns counts: runs, train_metrics, eval_metrics, skipped_files, skipped_lines.
    """
    import duckdb

    results_root = Path(results_root)
    db_path = Path(db_path) if db_path is not None else results_root / DEFAULT_DB
    counts = {"skipped_files": 0, "skipped_lines": 0}
    runs, train, evals = [], [], []
    for run in _find_runs(results_root):
        try:
            r, t, e = _read_run(run, results_root / "runs", counts)
        except Exception as exc:  # never let one run break the sync
            _warn(f"{run}: skipped ({type(exc).__name__}: {exc})", counts)
            continue
        runs.append(r)
        train.extend(t)
        evals.extend(e)

    grid_rows, members = _read_manifests(results_root / "runs", counts)
    runs = [r + (_current(r, members),) for r in runs]
    db_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = db_path.with_name(f".{db_path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        con = duckdb.connect(str(tmp))
        try:
            for ddl in _SCHEMA.values():
                con.execute(ddl)
            data = {
                "runs": _columns(runs, _RUNS_COLS, {}),
                "train_metrics": _columns(train, ["run_id", "grid", "iteration", "time", "name", "value"],
                                          {"value": "f8"}),
                "eval_metrics": _columns(evals, ["run_id", "grid", "iteration", "label", "name", "value", "lo", "hi",
                                                 "num_samples", "checkpoint"], {"value": "f8"}),
                "grids": _columns(grid_rows,
                                  ["grid", "position", "variant", "compare_to", "paper_metric", "paper_value",
                                   "paper_source"], {}),
            }
            for table, cols in data.items():
                if len(next(iter(cols.values()))) == 0:
                    continue
                # numpy NaN arrives as NULL: carry a flag and turn it back into NaN in SQL
                names = list(cols)
                select = list(names)
                if "value" in cols:
                    cols["_value_nan"] = np.isnan(cols["value"])
                    select[names.index("value")] = "CASE WHEN _value_nan THEN 'NaN'::DOUBLE ELSE value END"
                view = f"_src_{table}"
                con.register(view, cols)
                con.execute(f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(select)} FROM {view}")
                con.unregister(view)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        stale_wal = db_path.with_name(db_path.name + ".wal")
        if stale_wal.exists():
            warnings.warn(f"removing stale write-ahead log {stale_wal}", stacklevel=2)
            stale_wal.unlink()
        os.replace(tmp, db_path)
    finally:
        for p in (tmp, tmp.with_name(tmp.name + ".wal")):
            if p.exists():
                p.unlink()
    counts.update(runs=len(runs), train_metrics=len(train), eval_metrics=len(evals))
    return counts


class QueryError(ValueError):
    """A query that the read-only store refuses or that DuckDB rejects; the message is one line."""


# No file or network access and a locked configuration: a query reads the tables and nothing else
# (`copy ... to`, read_csv('/etc/passwd'), `install httpfs` and `set` are all refused by DuckDB itself).
SANDBOX = {"enable_external_access": False, "autoinstall_known_extensions": False,
           "autoload_known_extensions": False, "lock_configuration": True}


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines()]
    head = lines[:lines.index("")] if "" in lines else lines[:2]  # DuckDB's message and its "Did you mean"
    return " ".join(ln for ln in head if ln) or type(e).__name__


def query(db_path: str | os.PathLike, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
          ) -> tuple[list[str], list[tuple]]:
    """Run one SELECT ``sql`` (with ``?`` or ``$name`` parameters) on a read-only, sandboxed connection.
    Returns (columns, rows); anything else raises QueryError."""
    import duckdb

    db_path = Path(db_path)
    if not db_path.is_file():
        raise FileNotFoundError(f"{db_path} does not exist; build it with `senseflow results sync`")
    # the file is opened before access is locked down, then only the tables it holds are reachable
    con = duckdb.connect(str(db_path), read_only=True, config=SANDBOX)
    try:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as e:
            raise QueryError(_one_line(e)) from None
        if len(statements) != 1:
            raise QueryError(f"give exactly one statement, got {len(statements)}")
        kind = statements[0].type
        if kind != duckdb.StatementType.SELECT:
            raise QueryError(f"only read queries (select ... / with ... select) are allowed, got "
                             f"{kind.name.lower()}")
        try:
            cur = con.execute(sql, params if params is not None else [])
            cols = [d[0] for d in cur.description] if cur.description else []
            return cols, cur.fetchall()
        except duckdb.Error as e:
            raise QueryError(_one_line(e)) from None
    finally:
        con.close()
