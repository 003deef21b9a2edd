"""Checks that need a CUDA GPU (run by scripts/gpu-smoke.sh; skipped on machines without one).

A narrow copy of the SD3.5 architecture trains one iteration on the GPU under bf16 autocast with the
precision policy (fp32 G/F/D heads, bf16 teacher and backbones): the losses are finite, the FLOPs equal
the planner's fake-tensor count, and torch's peak allocation lies within 15% of the planner's figure.
"""

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def narrow_iteration():
    """One generator iteration of a narrow SD3.5 distiller on the GPU (bf16 autocast, fp32 G/F/D heads, bf16
    teacher and backbones) and the planner's fake-tensor trace of the same iteration."""

    from senseflow import config as C
    from senseflow import planner

    narrow = dict(num_layers=4, num_attention_heads=8, attention_head_dim=64, caption_projection_dim=512,
                  joint_attention_dim=512, pooled_projection_dim=256, pos_embed_max_size=64,
                  dual_attention_layers=(0, 1))
    cfg = C.resolve("sd35-medium-senseflow", ["model.resolution=256", "gan.backbone=facebook/dinov2-small",
                                               "gan.layers=[3, 11]", "optim.eight_bit=false", "optim.ttur=1",
                                               "train.trainable_dtype=float32", "model.dtype=bfloat16"])
    parts = planner.run_parts(cfg, text_tokens=64)
    parts.overrides = narrow
    dev = torch.device("cuda")
    d, text = planner.build_distiller(cfg, parts, fake=False, device=dev)
    batch = planner.make_batch(cfg, d, text, 2, device="cuda")
    planner.warm_optimizers(d)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    live, flops = planner.measure_iteration(cfg, d, batch, 3, True)  # under CUDA bf16 autocast
    peak_new = torch.cuda.max_memory_allocated() - base
    with torch.autocast("cuda", dtype=torch.bfloat16):
        m = d.step(1, batch)
    with planner._fake_mode():  # the trace's own mode (deep copies keep it)
        f, ftext = planner.build_distiller(cfg, parts, fake=True)
        fbatch = planner.make_batch(cfg, f, ftext, 2)
        planner.warm_optimizers(f)
        peaks, fake_flops = planner.measure_iteration(cfg, f, fbatch, 3, True)
    return dict(metrics=m, flops=flops, fake_flops=fake_flops, peak_new=peak_new, traced=peaks, live=live)


def test_one_bf16_iteration_on_the_gpu_is_finite_and_counts_the_planned_flops(narrow_iteration):
    r = narrow_iteration
    assert all(v == v and abs(v) != float("inf") for v in r["metrics"].values()), r["metrics"]
    assert sum(r["flops"].values()) > 0 and r["flops"] == r["fake_flops"]


def test_one_bf16_iteration_on_the_gpu_peaks_where_the_plan_says(narrow_iteration):
    r = narrow_iteration
    traced = max(r["traced"].values())
    print(f"peak allocated on top of the static state: {r['peak_new'] / 2 ** 20:.0f} MiB; traced "
          f"{traced / 2 ** 20:.0f} MiB; storages followed on the GPU {max(r['live'].values()) / 2 ** 20:.0f} MiB")
    assert abs(traced / r["peak_new"] - 1) < 0.15, (r["traced"], r["live"], r["peak_new"])


def test_bench_on_the_gpu_writes_bf16_figures(tmp_path):
    """`senseflow bench --device cuda` times iteration and sampling on the GPU under bf16 autocast (tiny models
    with --quick: the code path, not the figures)."""
    import json

    from senseflow.cli import main

    assert main(["bench", "iteration", "sampling", "--quick", "--device", "cuda", "--world", "sd3",
                 "--method", "senseflow", "--batch", "2", "--resolution", "32", "--out", str(tmp_path)]) == 0
    it = json.loads((tmp_path / "iteration-cuda.json").read_text())
    assert it["machine"]["cuda"] and it["settings"]["device"] == "cuda"
    (row,) = it["rows"]
    assert row["device"].startswith("cuda") and "bf16 autocast" in row["precision"]
    assert row["efficiency"]["ttur_mean"] > 0 and row["limit_parts_ms_ttur_mean"]["teacher"] > 0
    (sa,) = json.loads((tmp_path / "sampling-cuda.json").read_text())["rows"]
    assert sa["device"].startswith("cuda") and sa["speedup"] > 0
    assert not (tmp_path / "iteration.json").exists()


def test_eight_bit_adamw_is_bitsandbytes_and_its_states_are_what_the_planner_counts():
    """optim.eight_bit=true builds bitsandbytes' AdamW8bit (never a quiet fp32 AdamW); after one step its
    states take what the planner counts per parameter (two uint8 states and an fp32 absmax per 256-value
    block; bitsandbytes keeps fp32 states for tensors under 4096 values, so a little more)."""
    from senseflow import config as C
    from senseflow import planner

    narrow = dict(num_layers=2, num_attention_heads=8, attention_head_dim=64, caption_projection_dim=512,
                  joint_attention_dim=512, pooled_projection_dim=256, pos_embed_max_size=64,
                  dual_attention_layers=(0,))
    cfg = C.resolve("sd35-large-senseflow", ["model.resolution=256", "gan.backbone=facebook/dinov2-small",
                                              "gan.layers=[3, 11]", "optim.eight_bit=true", "optim.ttur=1",
                                              "train.trainable_dtype=float32", "model.dtype=bfloat16"])
    parts = planner.run_parts(cfg, text_tokens=64)
    parts.overrides = narrow
    d, text = planner.build_distiller(cfg, parts, fake=False, device=torch.device("cuda"))
    assert type(d.opt_g).__module__.startswith("bitsandbytes") and d.optimizer_info["eight_bit"]
    batch = planner.make_batch(cfg, d, text, 2, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        m = d.step(0, batch)
    assert all(v == v and abs(v) != float("inf") for v in m.values()), m
    params = [p for g in d.opt_g.param_groups for p in g["params"]]
    state = sum(v.numel() * v.element_size() for p in params for v in d.opt_g.state[p].values() if torch.is_tensor(v))
    uint8 = [v for p in params for v in d.opt_g.state[p].values() if torch.is_tensor(v) and v.dtype == torch.uint8]
    assert uint8, "no 8-bit state"
    planned = sum(p.numel() for p in params) * planner.EIGHT_BIT_BYTES
    print(f"AdamW8bit states of G: {state / 2 ** 20:.1f} MiB, planned {planned / 2 ** 20:.1f} MiB")
    assert planned <= state <= 1.10 * planned
