"""Scaling: iteration time and peak memory against batch size and image size, with the fitted exponent
(a benchmark, not a test).

For each (world, size) in ascending order, the Distiller of the SenseFlow preset is built and `iterations`
(generator, critic-only) pairs are timed after one warm-up pair; the TTUR-averaged iteration time is
(G + (ttur - 1) C) / ttur. Peak memory is the process's peak resident set (getrusage ru_maxrss) after the
configuration ran: the sizes run in ascending order, so each configuration's peak is the largest so far
(a configuration that needs less than an earlier one would show the earlier peak; `peak_grew` says whether
this one raised it). The exponent is the least-squares slope of log(time) on log(size): 1 = linear.
"""

from __future__ import annotations

import gc
import math
import resource
import time


def _ttur_mean(setup, iterations: int) -> float:
    from senseflow.bench import setups

    ttur = setup.cfg.optim.ttur
    d = setups.distiller(setup)
    gen, crit = [], []
    for j in range(1 + iterations):
        for it in (j * ttur, j * ttur + 1):
            batch = setups.batch(setup, it)
            t0 = time.perf_counter()
            d.step(it, batch)
            if j:
                (gen if it % ttur == 0 else crit).append(time.perf_counter() - t0)
    g, c = sum(gen) / len(gen), sum(crit) / len(crit)
    del d
    gc.collect()
    return (g + (ttur - 1) * c) / ttur


def _slope(xs, ys) -> float | None:
    if len(xs) < 2:
        return None
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return round(sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den, 3) if den else None


def scale(world: str, axis: str, sizes, *, batch: int, threads: int, iterations: int, digits_world=None,
          tiny: bool = False, log=print) -> dict:
    """axis: "batch" (sizes are batch sizes) or "resolution" (image sizes in pixels, SD3 / FLUX only)."""
    from senseflow.bench import setups

    points = []
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for size in sorted(sizes):
        extra = [f"model.resolution={size}"] if axis == "resolution" else []
        if world == "digits" and tiny:
            extra.append("model.teacher=quick")
        cfg = setups.run_config(world, "senseflow", extra, size if axis == "batch" else batch, threads)
        st = setups.build(world, cfg, digits_world, tiny=tiny)
        ms = 1000 * _ttur_mean(st, iterations)
        now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        points.append({axis: size, "ttur_mean_ms": round(ms, 2), "peak_rss_mib": round(now / 1024, 1),
                       "peak_grew": now > peak})
        peak = max(peak, now)
        log(f"  {world} {axis} {size}: {ms:.0f} ms, peak {now / 1024:.0f} MiB")
    return {"world": world, "axis": axis, "batch": batch if axis == "resolution" else None, "points": points,
            "time_exponent": _slope([p[axis] for p in points], [p["ttur_mean_ms"] for p in points])}
