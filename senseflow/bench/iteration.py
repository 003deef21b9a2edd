"""Iteration efficiency and the cost of the paper's additions (benchmarks, not tests).

For one (world, method), with the Distiller built as a training run builds it:

    recorder = PassRecorder().attach(distiller)          # senseflow.bench.passes
    for j in range(warmup + iterations):                 # a generator iteration (j * ttur), then a critic-only one
        for it in (j * ttur, j * ttur + 1):
            recorder.start(); t = time(distiller.step(it, batch)); recorder.stop()
            limit = sum(time of each recorded pass alone) + optimizer steps and clipping + IDA (in place)

efficiency = step time / limit (1.0 is the limit), for generator and critic-only iterations and
TTUR-averaged: (G + (ttur-1) C) / (L_G + (ttur-1) L_C); overhead_ms = step time - limit (the work between
the passes: noise draws, losses, zero_grad, .item() reads). A ratio below 1 is timing noise. The limit's parts are reported by network
(G forward, G forward+backward, teacher, F, D, VAE decode, optimizer, IDA).

The paper's additions, as shares of the TTUR-averaged iteration time (IDA and ISG run in generator
iterations only, so their time divides by ttur):
    ida_share       the in-place time of the IDA update (target < 1%)
    isg_over_passes ISG's in-place time / its passes alone (the teacher's guided step and G's step from t_mid;
                    target <= 1.05), and isg_share
    disc_share      the discriminator's (and its VAE decode's) passes, alone, in both kinds of iteration
    backsim_share   the backward simulation's in-place time (generator forwards from noise to the anchor)
"""

from __future__ import annotations

from collections import defaultdict

from senseflow.bench import setups
from senseflow.bench.clock import now
from senseflow.bench.passes import PassRecorder
from senseflow.bench.setups import Setup


def _label(row: dict) -> str:
    name = row["name"]
    if name == "generator":
        return "G forward+backward" if row["backward"] else "G forward"
    if name == "fake_score":
        return "F forward+backward" if row["backward"] else "F forward"
    if name == "discriminator":
        return "D forward+backward" if row["backward"] else "D forward"
    return name


def _precision(cfg, dev) -> str:
    compute = f"{cfg.train.mixed_precision} autocast" if dev.type == "cuda" and cfg.train.mixed_precision != "no" else \
        "stored dtypes"
    return f"teacher {cfg.model.dtype}, G/F {cfg.train.trainable_dtype}, {compute}"


def time_iterations(setup: Setup, *, iterations: int, warmup: int = 1) -> dict:
    cfg = setup.cfg
    ttur = cfg.optim.ttur
    dev = setup.device
    distiller = setups.distiller(setup)
    rec = PassRecorder(device=str(dev)).attach(distiller)
    kinds = {"generator": defaultdict(list), "critic": defaultdict(list)}
    try:
        for j in range(warmup + iterations):
            for it in ((j * ttur, j * ttur + 1) if ttur > 1 else (j,)):
                batch = setups.batch(setup, it)
                rec.start()
                t0 = now(dev)
                with setups.autocast(setup):
                    distiller.step(it, batch)
                step_s = now(dev) - t0
                rec.stop()
                rows = rec.replay()
                if j < warmup:
                    continue
                k = kinds["generator" if it % ttur == 0 else "critic"]
                k["step"].append(step_s)
                parts = defaultdict(float)
                for r in rows:
                    parts[_label(r)] += r["seconds"]
                    for tag in r["tags"]:
                        parts[f"passes:{tag}"] += r["seconds"]
                    if r["name"] in ("discriminator", "vae_decode"):
                        parts["passes:discriminator"] += r["seconds"]
                for tag, s in rec.in_place.items():
                    parts[f"in_place:{tag}"] += s
                parts["optimizer+clip"] += rec.in_place.get("optimizer", 0.0)
                parts["ida"] += rec.in_place.get("ida", 0.0)
                k["limit"].append(sum(r["seconds"] for r in rows) + rec.in_place.get("optimizer", 0.0)
                                  + rec.in_place.get("ida", 0.0))
                for name, s in parts.items():
                    k[name].append(s)
    finally:
        rec.detach()

    def mean(kind: str, key: str) -> float:
        vals = kinds[kind].get(key, [])
        n = len(kinds[kind]["step"])
        return sum(vals) / n if n else 0.0  # missing in an iteration = 0 s there

    g = {key: mean("generator", key) for key in kinds["generator"]}
    c = {key: mean("critic", key) for key in kinds["critic"]} if ttur > 1 else g
    w = (ttur - 1) / ttur if ttur > 1 else 0.0

    def avg(key: str) -> float:
        return g.get(key, 0.0) / ttur + w * c.get(key, 0.0) if ttur > 1 else g.get(key, 0.0)

    it_s, lim_s = avg("step"), avg("limit")
    isg_passes = g.get("passes:isg", 0.0)
    backsim_passes = avg("passes:backsim")
    ms = lambda s: round(1000 * s, 2)  # noqa: E731
    ratio = lambda a, b: round(a / b, 3) if b else None  # noqa: E731
    return {
        "world": setup.world, "method": cfg.method, "preset": cfg.preset, "teacher_params": setup.params,
        "device": str(dev), "precision": _precision(cfg, dev),
        "batch_size": cfg.train.batch_size, "resolution": cfg.model.resolution, "ttur": ttur,
        "gan": cfg.gan.kind, "isg": bool(cfg.isg.enabled and cfg.isg.weight > 0), "ida": bool(cfg.ida.enabled),
        "backsim_prob": cfg.generator.backsim_prob, "warmup_periods": warmup,
        "generator_iterations": len(kinds["generator"]["step"]), "critic_iterations": len(kinds["critic"]["step"]),
        "iteration_ms": {"generator": ms(g["step"]), "critic": ms(c["step"]), "ttur_mean": ms(it_s)},
        "limit_ms": {"generator": ms(g["limit"]), "critic": ms(c["limit"]), "ttur_mean": ms(lim_s)},
        "overhead_ms": {"generator": ms(g["step"] - g["limit"]), "critic": ms(c["step"] - c["limit"]),
                        "ttur_mean": ms(it_s - lim_s)},
        "efficiency": {"generator": ratio(g["step"], g["limit"]), "critic": ratio(c["step"], c["limit"]),
                       "ttur_mean": ratio(it_s, lim_s), "target": 1.10},
        "limit_parts_ms_ttur_mean": {k: ms(avg(k)) for k in sorted(set(g) | set(c))
                                     if k not in ("step", "limit") and not k.startswith(("passes:", "in_place:"))},
        "additions": {
            "ida_share": ratio(avg("in_place:ida"), it_s), "ida_target": 0.01,
            "isg_share": ratio(avg("in_place:isg"), it_s),
            "isg_over_passes": ratio(g.get("in_place:isg", 0.0), isg_passes), "isg_target": 1.05,
            "disc_share": ratio(avg("passes:discriminator"), it_s),
            "backsim_share": ratio(avg("in_place:backsim"), it_s),
            "backsim_over_passes": ratio(avg("in_place:backsim"), backsim_passes),
        },
    }
