"""results/bench/*.json as Markdown tables (`senseflow bench --table`), for the README."""

from __future__ import annotations

import json
from pathlib import Path


def _head(d: dict) -> str:
    m = d["machine"]
    on = d["settings"].get("device", "cpu")
    where = f"{m['cuda']} (bf16 autocast), host " if on == "cuda" else ""
    return (f"`{d['benchmark']}` on {on}: {d['date']}, {where}{m['cpu']} ({m['cores']} cores), {d['threads']} thread(s), torch "
            f"{m['torch']}, commit {d['commit']}, load average {d['load_average_before'][0]} -> "
            f"{d['load_average_after'][0]}, allocator {d['settings'].get('allocator', 'default')}")


def _ms(x: float) -> str:
    """Milliseconds with the digits that matter (GPU iterations take a few)."""
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"


def _iteration(d: dict) -> list[str]:
    out = ["| world | method | params | batch | TTUR | iteration G / critic / mean (ms) | limit mean (ms) | "
           "efficiency G / critic / mean | IDA share | ISG share | ISG / its passes | D share | backsim share |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in d["rows"]:
        if "error" in r:
            out.append(f"| {r['world']} | {r['method']} | failed: {r['error']} |" + " |" * 10)
            continue
        it, lim, e, a = r["iteration_ms"], r["limit_ms"], r["efficiency"], r["additions"]
        pct = lambda x: "–" if not x else f"{100 * x:.1f}%"  # noqa: E731
        out.append(f"| {r['world']} | {r['method']} | {r['teacher_params'] / 1e6:.1f}M | {r['batch_size']} | "
                   f"{r['ttur']} | {_ms(it['generator'])} / {_ms(it['critic'])} / {_ms(it['ttur_mean'])} | "
                   f"{_ms(lim['ttur_mean'])} | {e['generator']:.3f} / {e['critic']:.3f} / **{e['ttur_mean']:.3f}** | "
                   f"{pct(a['ida_share'])} | {pct(a['isg_share'])} | "
                   f"{a['isg_over_passes'] if a['isg_over_passes'] else '–'} | {pct(a['disc_share'])} | "
                   f"{pct(a['backsim_share'])} |")
    return out


def _sampling(d: dict) -> list[str]:
    out = ["| world | batch | student 4 steps (ms) | teacher 50 steps (ms) | guidance | speed-up | limit | "
           "efficiency | limit at this batch | efficiency at this batch |", "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in d["rows"]:
        if "error" in r:
            out.append(f"| {r['world']} | failed: {r['error']} |" + " |" * 8)
            continue
        out.append(f"| {r['world']} | {r['batch_size']} | {_ms(r['student_ms'])} | {_ms(r['teacher_ms'])} | "
                   f"{r['teacher_guidance']} | **{r['speedup']:.1f}x** | {r['limit']}x | {r['efficiency']:.3f} | "
                   f"{r['limit_at_this_batch']:.1f}x | {r['efficiency_at_this_batch']:.3f} |")
    return out


def _metrics(d: dict) -> list[str]:
    out = ["| metric | images/s | batch | build (s) |", "|---|---:|---:|---:|"]
    out += [f"| {r['metric']} | {r['images_per_second']:.2f} | {r['batch']} | {r['build_seconds']:.1f} |"
            for r in d["rows"]]
    return out


def _step(d: dict) -> list[str]:
    out = ["| run | batch | G step (ms) | critic-only (ms) | TTUR mean (ms) |", "|---|---:|---:|---:|---:|"]
    out += [f"| {r['run']} | {r['batch_size']} | {r['generator_ms']:.0f} | {r['critic_ms']:.0f} | "
            f"{r['ttur_mean_ms']:.0f} |" for r in d["rows"]]
    return out


def _scaling(d: dict) -> list[str]:
    out = ["| world | axis | points (size: TTUR-mean ms, peak RSS MiB) | time exponent |", "|---|---|---|---:|"]
    for r in d["rows"]:
        pts = "; ".join(f"{p[r['axis']]}: {p['ttur_mean_ms']:.0f} ms, {p['peak_rss_mib']:.0f}"
                        f"{'' if p['peak_grew'] else ' (not raised)'}" for p in r["points"])
        out.append(f"| {r['world']} | {r['axis']}{'' if r['batch'] is None else ' (batch %d)' % r['batch']} | {pts} | "
                   f"{r['time_exponent']} |")
    return out


def _harness(d: dict) -> list[str]:
    out = ["| side | it/s per run | wall (s) | training (s) | evaluation (s) | start-up and bookkeeping (s) |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in d["rows"]:
        for side in ("grid", "separate"):
            x = r[side]
            out.append(f"| {side} ({r['cells']} x {r['iterations']} it) | {x['mean_iterations_per_second']} | "
                       f"{x['wall_seconds']} | {x['train_seconds_max']} | {x['eval_seconds_max']} | {x['other_seconds']} |")
        out.append(f"| grid slower by | {100 * r['grid_slower_by']:.1f}% (target < 5%) | | | | |")
    return out


def _main_job(d: dict) -> list[str]:
    out = ["| main job (commit) | wall (s) | world build | training | evaluation | bookkeeping | steps (s) | "
           "grid runs: training / evaluation / start-up and bookkeeping, summed (s) |",
           "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in d["rows"]:
        w = r["wall_split"]
        steps = ", ".join(f"{k} {v:.0f}" for k, v in r["steps"].items())
        g = r["grid_sums"]
        out.append(f"| {r['commit']} | {r['seconds']:.0f} | {w['world build']:.0f} | {w['training']:.0f} | "
                   f"{w['evaluation']:.0f} | {w['bookkeeping']:.0f} | {steps} | {r['runs']} runs: {g['training']:.0f} / "
                   f"{g['evaluation']:.0f} / {g['start-up and bookkeeping']:.0f} |")
    return out


TABLES = {"iteration": _iteration, "sampling": _sampling, "metrics": _metrics, "step": _step, "scaling": _scaling,
          "harness": _harness, "main-job": _main_job}


def markdown(folder: Path) -> str:
    lines: list[str] = []
    for name, table in TABLES.items():
        for path in (folder / f"{name}.json", folder / f"{name}-cuda.json"):
            if not path.is_file():
                continue
            d = json.loads(path.read_text())
            lines += [_head(d), "", *table(d), ""]
    return "\n".join(lines)
