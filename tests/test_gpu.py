"""Checks that need a CUDA GPU (run by scripts/gpu-smoke.sh; skipped on machines without one).

A narrow copy of the SD3.5 architecture trains one iteration on the GPU under bf16 autocast with the
precision policy (fp32 G/F/D heads, bf16 teacher and backbones): the losses are finite, the FLOPs equal
the planner's fake-tensor count, and torch's peak allocation lies within 15% of the planner's figure.
"""

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_one_bf16_iteration_on_the_gpu_matches_the_plan():
    from torch._subclasses.fake_tensor import FakeTensorMode

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
    _, flops = planner.measure_iteration(cfg, d, batch, 3, True)  # under CUDA bf16 autocast
    peak_new = torch.cuda.max_memory_allocated() - base
    with torch.autocast("cuda", dtype=torch.bfloat16):
        m = d.step(1, batch)
    assert all(v == v and abs(v) != float("inf") for v in m.values()), m
    with FakeTensorMode(allow_non_fake_inputs=True), planner._ScalarReads():
        f, ftext = planner.build_distiller(cfg, parts, fake=True)
        fbatch = planner.make_batch(cfg, f, ftext, 2)
        planner.warm_optimizers(f)
        peaks, fake_flops = planner.measure_iteration(cfg, f, fbatch, 3, True)
    assert sum(flops.values()) > 0 and flops == fake_flops
    assert abs(max(peaks.values()) / peak_new - 1) < 0.15, (max(peaks.values()), peak_new)
