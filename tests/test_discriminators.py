"""Discriminators: DiffAugment, local batch norm, spectral norm, the VFM discriminator on a tiny random DINOv2,
and DMD2's bottleneck classifier on tiny SD3 / FLUX / SDXL backbones. CPU only, no weights, no downloads."""

from __future__ import annotations

import math
import os

import pytest
import torch

from senseflow import losses
from senseflow.discriminators import (SMALL_MAP, BatchNormLocal, DMD2Discriminator, VFMDiscriminator,
                                      build_discriminator, default_layers, diffaugment, downsamples_for, frozen,
                                      locate_bottleneck, sn_conv, tiny_dinov2)
from senseflow.models.base import Conditioning


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int, c: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, side, side, generator=_rng(seed)) * 2 - 1


@pytest.fixture(scope="module", autouse=True)
def _threads_as_asked():
    """tests/conftest.py sets 2 torch threads; on a 2-core cgroup shared with other jobs that makes these
    tiny ops several times slower in CPU time. Honour OMP_NUM_THREADS here, and restore afterwards."""
    before = torch.get_num_threads()
    asked = os.environ.get("OMP_NUM_THREADS", "")
    if asked.isdigit() and int(asked) > 0:
        torch.set_num_threads(int(asked))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dino():
    return tiny_dinov2(seed=0)  # hidden 32, 4 blocks, patch 2, image 8


# ----------------------------------------------------------------------------- DiffAugment
@pytest.mark.parametrize("channels", [1, 3])
def test_diffaugment_shape_seed_determinism(channels):
    x = _images(6, channels, 16)
    policy = ["color", "translation", "cutout"]
    a = diffaugment(x, policy, _rng(1))
    b = diffaugment(x, policy, _rng(1))
    c = diffaugment(x, policy, _rng(2))
    assert a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(diffaugment(x, [], _rng(1)), x)
    with pytest.raises(ValueError, match="unknown DiffAugment"):
        diffaugment(x, ["rotate"], _rng(1))


def test_translation_is_a_zero_filled_integer_shift():
    x = torch.rand(8, 2, 16, 16, generator=_rng(0)) + 0.5  # strictly positive: fill zeros are visible
    out = diffaugment(x, ["translation"], _rng(3))
    r = 2  # 16 / 8
    assert not torch.equal(out, x)
    for i in range(x.shape[0]):
        matches = []
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                ref = torch.zeros_like(x[i])
                ys, yd = (slice(0, 16 - dy), slice(dy, 16)) if dy >= 0 else (slice(-dy, 16), slice(0, 16 + dy))
                xs, xd = (slice(0, 16 - dx), slice(dx, 16)) if dx >= 0 else (slice(-dx, 16), slice(0, 16 + dx))
                ref[:, yd, xd] = x[i][:, ys, xs]
                if torch.equal(out[i], ref):
                    matches.append((dy, dx))
        assert len(matches) == 1, f"sample {i} is not a single shift within +-{r}: {matches}"


def test_cutout_zeroes_one_rectangle_of_at_most_half_size():
    x = torch.rand(8, 3, 16, 16, generator=_rng(0)) + 0.5
    out = diffaugment(x, ["cutout"], _rng(4))
    for i in range(x.shape[0]):
        cut = out[i, 0] == 0
        assert cut.any()
        rows, cols = cut.any(1).nonzero().flatten(), cut.any(0).nonzero().flatten()
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert h <= 8 and w <= 8 and int(cut.sum()) == h * w  # one filled rectangle
        assert bool((out[i][:, cut] == 0).all())  # the same pixels in every channel
        assert torch.equal(out[i][:, ~cut], x[i][:, ~cut])


def test_diffaugment_is_differentiable_and_color_changes_values():
    x = _images(4, 3, 16).requires_grad_(True)
    out = diffaugment(x, ["color", "translation", "cutout"], _rng(5))
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    col = diffaugment(x.detach(), ["color"], _rng(6))
    assert (col - x.detach()).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every sample altered


def test_diffaugment_with_cpu_generator_keeps_input_device_and_dtype():
    x = _images(2, 3, 8).double()
    out = diffaugment(x, ["color", "translation", "cutout"], _rng(0))
    assert out.dtype == torch.float64 and out.device == x.device


# ----------------------------------------------------------------------------- building blocks
def test_batchnorm_local_normalises_each_virtual_group():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 4, 4)
    x[:8] = x[:8] * 3 + 5  # group 0 far from group 1
    x[8:] = x[8:] * 0.5 - 2
    bn = BatchNormLocal(3, virtual_batch=8)
    y = bn(x)
    for g in (y[:8], y[8:]):
        assert torch.allclose(g.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
        assert torch.allclose(g.var(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    # whole-batch statistics would leave the two groups apart
    whole = torch.nn.functional.batch_norm(x, None, None, training=True)
    assert whole[:8].mean() > 0.5 and not torch.allclose(y, whole, atol=1e-2)
    # a group's output does not depend on other groups
    x2 = x.clone()
    x2[8:] = torch.randn(8, 3, 4, 4)
    assert torch.allclose(bn(x2)[:8], y[:8])
    # uneven batch: 10 samples, virtual batch 8 -> two groups of 5
    z = bn(x[:10])
    assert torch.allclose(z[:5].mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z[5:].mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    # affine parameters act per channel
    with torch.no_grad():
        bn.weight.fill_(2.0)
        bn.bias.fill_(1.0)
    assert torch.allclose(bn(x)[:8].mean(dim=(0, 2, 3)), torch.ones(3), atol=1e-5)


def test_batchnorm_local_chunks_equal_separate_calls():
    """chunks=k: one call on k stacked sub-batches equals k calls, also for uneven groups and single values."""
    torch.manual_seed(0)
    bn = BatchNormLocal(3, virtual_batch=4)
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
    for b, side in [(8, 4), (10, 2), (7, 1), (1, 1)]:  # 10 -> groups 4, 3, 3; 7 -> 4, 3; 1x1 of one sample
        xs = [torch.randn(b, 3, side, side) * (i + 1) + 2 * i for i in range(3)]
        bn.chunks = 3
        joint = bn(torch.cat(xs))
        bn.chunks = 1
        assert torch.allclose(joint, torch.cat([bn(x) for x in xs]), atol=1e-5), (b, side)
    # one value per statistic normalises to zero: the output is the bias
    assert torch.allclose(bn(torch.randn(1, 3, 1, 1)), bn.bias.detach().view(1, 3, 1, 1))
    bn.chunks = 2
    with pytest.raises(ValueError, match="chunks"):
        bn(torch.randn(3, 3, 2, 2))


@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 1), (3, 2)])
def test_head_conv_matches_circularly_padded_conv2d(kernel, stride):
    """The heads' GEMM path on small maps computes F.pad(circular) + conv2d, forward and backward."""
    torch.manual_seed(0)
    conv = sn_conv(6, 5, kernel, stride).eval()  # eval: the spectral-normalised weight is fixed
    original = conv.parametrizations.weight.original
    pad = kernel // 2
    for h, w in [(1, 1), (2, 2), (4, 4), (3, 5), (9, 9)]:  # 9x9 > SMALL_MAP: the stock path
        x = torch.randn(3, 6, h, w, requires_grad=True)
        out = conv(x)
        padded = torch.nn.functional.pad(x, (pad,) * 4, mode="circular") if pad else x
        ref = torch.nn.functional.conv2d(padded, conv.weight, conv.bias, stride)
        assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5), (h, w)
        g = torch.randn_like(ref)
        got = torch.autograd.grad(out, (x, original, conv.bias), g)
        want = torch.autograd.grad(ref, (x, original, conv.bias), g)
        for a, b in zip(got, want):
            assert torch.allclose(a, b, atol=1e-4), (h, w)
    assert 4 * 4 <= SMALL_MAP < 9 * 9


def test_spectral_norm_keeps_top_singular_value_near_one():
    torch.manual_seed(0)
    conv = sn_conv(8, 16, 3, stride=2)
    with torch.no_grad():
        conv.parametrizations.weight.original.mul_(10.0)
    conv.train()
    x = torch.randn(2, 8, 6, 6)
    for _ in range(30):  # one power iteration per training forward
        conv(x)
    conv.eval()
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    raw = torch.linalg.matrix_norm(conv.parametrizations.weight.original.detach().flatten(1), ord=2)
    assert raw > 5
    assert abs(float(sigma) - 1.0) < 1e-2
    assert conv.padding_mode == "circular"


def test_default_layers_and_downsample_clamp():
    assert default_layers(24) == [2, 5, 8, 10, 14, 19, 23]
    assert default_layers(12) == [1, 2, 4, 5, 7, 9, 11]
    assert default_layers(4) == [0, 1, 2, 3]
    assert [downsamples_for(g) for g in (1, 2, 4, 16, 73)] == [0, 1, 2, 3, 3]


# ----------------------------------------------------------------------------- VFM discriminator
def test_features_match_the_backbones_hidden_states(dino):
    d = VFMDiscriminator(dino, text_dim=8, layers=[1, 3], reference=False)
    x = _images(2, 3, 8)  # the backbone's own 4x4 grid: no position-embedding resize, transformers' exact path
    maps = d.features(x)
    pix = ((x + 1) / 2 - d.pixel_mean) / d.pixel_std
    hs = dino(pixel_values=pix, output_hidden_states=True).hidden_states  # (embeddings, block 0, ..., block 3)
    assert len(maps) == 3
    for m, idx in zip(maps, (0, 2, 4)):
        tok = hs[idx][:, 1:] + hs[idx][:, :1]
        assert m.shape == (2, 32, 4, 4)
        assert torch.equal(m, tok.transpose(1, 2).reshape(2, 32, 4, 4))


def test_position_embeddings_are_resized_bilinearly_as_the_authors_do(dino):
    """The authors resize DINO's position grid bilinearly (align_corners=False); transformers' Dinov2 does it
    bicubically. At 12 px (6x6 patches from the stored 4x4 grid) ours is the bilinear resize exactly, and the
    patch-embedding map differs from transformers' bicubic one."""
    import torch.nn.functional as F

    d = VFMDiscriminator(dino, text_dim=8, layers=[3], reference=False)
    pos = dino.embeddings.position_embeddings
    grid = pos[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(6, 5), mode="bilinear", align_corners=False).permute(0, 2, 3, 1).reshape(1, 30, -1)
    got = d.position_embeddings((6, 5))
    assert torch.equal(got[:, :1], pos[:, :1]) and torch.allclose(got[:, 1:], want, atol=0, rtol=0)
    bicubic = F.interpolate(grid, size=(6, 5), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 30, -1)
    assert (got[:, 1:] - bicubic).abs().max() > 1e-3
    assert d.position_embeddings((4, 4)) is pos  # the stored grid, untouched
    x = _images(2, 3, 12)
    pix = ((x + 1) / 2 - d.pixel_mean) / d.pixel_std
    ours, hf = d.embed(pix), dino.embeddings(pix)
    assert ours.shape == hf.shape == (2, 37, 32)
    assert torch.equal(ours[:, :1], hf[:, :1])  # the CLS token is not resized
    assert (ours[:, 1:] - hf[:, 1:]).abs().max() > 1e-4
    # transformers' embedding layer with the bilinear grid in place of its bicubic one gives ours
    patches = dino.embeddings.patch_embeddings(pix)
    manual = torch.cat([dino.embeddings.cls_token.expand(2, -1, -1), patches], 1) + d.position_embeddings((6, 6))
    assert torch.allclose(ours, manual, atol=1e-6)


def test_vfm_output_shapes_tiny_and_32px(dino):
    d8 = VFMDiscriminator(dino, text_dim=16, image_size=8)
    assert d8.downsample == 2 and len(d8.heads) == 5  # 4x4 grid: 4 -> 2 -> 1; embeddings + blocks 0..3
    x = _images(4, 1, 8)
    assert d8(x, torch.randn(4, 16), ref_images=x, rng=_rng(0)).shape == (4, 5)
    d32 = VFMDiscriminator(dino, text_dim=16, layers=[1, 3])
    x = _images(3, 3, 32)
    assert d32(x, torch.randn(3, 16), ref_images=x, rng=_rng(0)).shape == (3, 3 * 4)  # 16 -> 8 -> 4 -> 2
    # unclamped heads on a 4x4 grid stop at 1x1 instead of failing
    dyn = VFMDiscriminator(dino, text_dim=16, layers=[3], reference=False)
    assert dyn(_images(2, 1, 8), torch.randn(2, 16), augment=False).shape == (2, 2)


def test_vfm_gradients_reach_heads_and_input_not_backbone(dino):
    d = VFMDiscriminator(dino, text_dim=16, image_size=8).train()
    assert not d.backbone.training  # frozen backbone stays in eval mode
    backbone_ids = {id(p) for p in d.backbone.parameters()}
    trainable = d.trainable_parameters()
    assert trainable and not any(id(p) in backbone_ids for p in trainable)
    assert len(trainable) == len(list(d.parameters())) - len(backbone_ids)
    fake = _images(4, 1, 8, seed=1).requires_grad_(True)  # the generator's sample
    real = _images(4, 1, 8, seed=2)
    logits = d(fake, torch.randn(4, 16), ref_images=real, rng=_rng(0))
    (-logits.mean()).backward()
    assert all(p.grad is None for p in d.backbone.parameters())
    assert all(p.grad is not None for p in trainable), "clamped heads must use every parameter"
    assert fake.grad is not None and fake.grad.abs().sum() > 0


def test_vfm_backbone_checkpointing_gives_the_same_gradient(dino):
    torch.manual_seed(0)
    plain = VFMDiscriminator(dino, text_dim=16, image_size=8)
    ckpt = VFMDiscriminator(dino, text_dim=16, image_size=8, checkpoint_backbone=True)
    ckpt.load_state_dict(plain.state_dict())
    grads = []
    for d in (plain, ckpt):
        x = _images(2, 3, 8).requires_grad_(True)
        d(x, torch.ones(2, 16), ref_images=x.detach(), augment=False).sum().backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_vfm_reference_and_text_conditioning(dino):
    torch.manual_seed(0)
    x, r1, r2 = _images(4, 3, 8, 1), _images(4, 3, 8, 2), _images(4, 3, 8, 3)
    t = torch.randn(4, 16)
    d = VFMDiscriminator(dino, text_dim=16, image_size=8).eval()  # eval: no spectral-norm power-iteration update
    a = d(x, t, ref_images=r1, augment=False)
    assert torch.equal(a, d(x, t, ref_images=r1, augment=False))  # nothing cached, deterministic
    assert not torch.allclose(a, d(x, t, ref_images=r2, augment=False))
    assert not torch.allclose(a, d(x, torch.randn(4, 16), ref_images=r1, augment=False))
    assert torch.equal(d(x, Conditioning(torch.zeros(4, 2, 8), t), ref_images=r1, augment=False), a)
    with pytest.raises(ValueError, match="ref_images"):
        d(x, t)
    n = VFMDiscriminator(dino, text_dim=16, image_size=8, reference=False).eval()
    assert n.refmappers is None
    b = n(x, t, ref_images=r1, augment=False)
    assert torch.equal(b, n(x, t, ref_images=r2, augment=False))
    assert torch.equal(b, n(x, t, augment=False))
    # augmentation touches the judged image only: the reference pass is unchanged under any rng
    aug1 = d(x, t, ref_images=r1, rng=_rng(7))
    assert torch.equal(aug1, d(x, t, ref_images=r1, rng=_rng(7)))
    assert not torch.allclose(aug1, a)


@pytest.mark.parametrize("batch", [8, 7])  # 7: not a multiple of virtual_batch (groups of 4 and 3)
def test_vfm_real_fake_logits_equal_two_calls(dino, batch):
    torch.manual_seed(0)
    d = VFMDiscriminator(dino, text_dim=16, image_size=8, virtual_batch=4).eval()  # eval: no power iteration
    real, fake, ref = _images(batch, 1, 8, 1), _images(batch, 1, 8, 2), _images(batch, 1, 8, 3)
    t = torch.randn(batch, 16)
    rng = _rng(5)  # DiffAugment draws for real then fake, in the order of two calls
    sep = (d(real, t, ref_images=ref, rng=rng), d(fake, t, ref_images=ref, rng=rng))
    joint = d.real_fake_logits(real, fake, t, ref_images=ref, rng=_rng(5))
    assert joint[0].shape == (batch, 5)
    for a, b in zip(joint, sep):
        assert torch.allclose(a, b, atol=1e-5)
    # the same gradients on every trainable parameter (refmappers: the sum of the two calls' shares)
    params = d.trainable_parameters()
    rng = _rng(5)
    g_sep = torch.autograd.grad(losses.hinge_d_loss(d(real, t, ref_images=ref, rng=rng),
                                                    d(fake, t, ref_images=ref, rng=rng)), params)
    g_joint = torch.autograd.grad(losses.hinge_d_loss(*d.real_fake_logits(real, fake, t, ref_images=ref,
                                                                          rng=_rng(5))), params)
    for a, b in zip(g_joint, g_sep):
        assert torch.allclose(a, b, atol=1e-5)
    # without reference and augmentation too; BatchNormLocal is back to one chunk afterwards
    n = VFMDiscriminator(dino, text_dim=16, image_size=8, virtual_batch=4, reference=False).eval()
    joint = n.real_fake_logits(real, fake, t, augment=False)
    assert torch.allclose(joint[0], n(real, t, augment=False), atol=1e-5)
    assert torch.allclose(joint[1], n(fake, t, augment=False), atol=1e-5)
    assert all(m.chunks == 1 for m in n.modules() if isinstance(m, BatchNormLocal))
    with pytest.raises(ValueError, match="one shape"):
        n.real_fake_logits(real, fake[:-1], t)


def test_vfm_real_fake_logits_do_one_power_iteration(dino):
    """Train mode: the joint pass updates spectral norm's u, v once, as the first of two calls would; its real
    logits equal that first call's."""
    import copy

    torch.manual_seed(0)
    d = VFMDiscriminator(dino, text_dim=16, image_size=8).train()
    twin = copy.deepcopy(d)
    real, fake = _images(4, 3, 8, 1), _images(4, 3, 8, 2)
    t = torch.randn(4, 16)
    joint = d.real_fake_logits(real, fake, t, ref_images=real, rng=_rng(0))
    first = twin(real, t, ref_images=real, rng=_rng(0))
    assert torch.allclose(joint[0], first, atol=1e-5)
    for (name, a), b in zip(d.named_buffers(), twin.buffers()):
        if name.endswith(("_u", "_v")):
            assert torch.allclose(a, b, atol=1e-6), name


def test_frozen_discriminator_passes_gradient_to_the_input_only(dino):
    d = VFMDiscriminator(dino, text_dim=16, image_size=8).train()
    params = d.trainable_parameters()
    x = _images(4, 1, 8, 1).requires_grad_(True)
    with frozen(params):
        assert not any(p.requires_grad for p in params)
        logits = d(x, torch.randn(4, 16), ref_images=_images(4, 1, 8, 2), rng=_rng(0))
    assert all(p.requires_grad for p in params)  # restored before the backward
    (-logits.mean()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in params)
    with pytest.raises(RuntimeError):
        with frozen(params):
            raise RuntimeError("restored on error too")
    assert all(p.requires_grad for p in params)


def test_vfm_rejects_bad_layers_and_missing_backbone(dino):
    with pytest.raises(ValueError, match="layers"):
        VFMDiscriminator(dino, text_dim=4, layers=[0, 4])
    from senseflow.models.loading import ModelNotAvailableError

    with pytest.raises(ModelNotAvailableError, match="no-such-dinov2"):
        VFMDiscriminator("senseflow-tests/no-such-dinov2", text_dim=4)


def test_vfm_loads_a_local_backbone_directory(dino, tmp_path):
    dino.save_pretrained(str(tmp_path / "dino"))
    d = VFMDiscriminator(str(tmp_path / "dino"), text_dim=4, layers=[3], reference=False)
    assert not any(p.requires_grad for p in d.backbone.parameters())
    x = _images(2, 3, 8)
    assert torch.allclose(d.features(x)[1], VFMDiscriminator(dino, text_dim=4, layers=[3]).features(x)[1])


# ----------------------------------------------------------------------------- DMD2 head
def _sd3_fake():
    from diffusers import SD3Transformer2DModel

    from senseflow.models.sd3 import SD3Denoiser

    torch.manual_seed(0)
    m = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=1, num_layers=2, attention_head_dim=8,
                              num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                              pooled_projection_dim=32, out_channels=1, pos_embed_max_size=8)
    return SD3Denoiser(m)


def _cond(b: int, text_dim: int = 32, pooled: int = 32, **extra) -> Conditioning:
    rng = _rng(11)
    return Conditioning(torch.randn(b, 5, text_dim, generator=rng), torch.randn(b, pooled, generator=rng), extra)


def test_dmd2_on_sd3_shapes_grads_and_no_leaking_hooks():
    fake = _sd3_fake()
    d = DMD2Discriminator(fake)
    tap, after = locate_bottleneck(fake)
    assert tap is fake.backbone.transformer_blocks[0] and after is fake.backbone.transformer_blocks[1]
    head_ids = {id(p) for p in d.head.parameters()}
    assert {id(p) for p in d.trainable_parameters()} == head_ids
    assert {id(p) for p in d.parameters()} == head_ids and all(k.startswith("head.") for k in d.state_dict())
    x = torch.randn(3, 1, 8, 8, generator=_rng(1))
    sigma, cond = torch.tensor([0.2, 0.5, 0.9]), _cond(3)
    with torch.no_grad():
        before = fake(x, sigma, cond)

    calls = []
    counter = fake.backbone.transformer_blocks[1].register_forward_hook(lambda *a: calls.append(1))
    xg = x.clone().requires_grad_(True)
    logits = d(xg, sigma, cond)
    counter.remove()
    assert logits.shape == (3,) and logits.std() > 0
    assert not calls, "early exit: blocks after the bottleneck must not run"
    logits.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    assert all(p.grad is not None for p in d.head.parameters())
    # hooks are gone and the fake score answers as before
    for block in fake.backbone.transformer_blocks:
        assert not block._forward_hooks and not block._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(fake(x, sigma, cond), before)
    # the features are those after the middle block of a full forward
    seen = []
    h = tap.register_forward_hook(lambda m, a, o: seen.append(o[1]))
    with torch.no_grad():
        fake(x, sigma, cond)
        feat = d.bottleneck(x, sigma, cond)
    h.remove()
    assert feat.shape == (3, 16, 4, 4)
    assert torch.allclose(feat, seen[0].transpose(1, 2).reshape(3, 16, 4, 4))


def test_dmd2_on_flux_and_sdxl_bottlenecks():
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    from senseflow.models.flux import FluxDenoiser
    from senseflow.models.sdxl import SDXLDenoiser

    torch.manual_seed(0)
    flux = FluxDenoiser(FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                               attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                               pooled_projection_dim=32, guidance_embeds=False,
                                               axes_dims_rope=(4, 4, 8)))
    with pytest.raises(ValueError, match="latent_size"):
        DMD2Discriminator(flux)
    d = DMD2Discriminator(flux, latent_size=8)  # packed 2x2 -> a 4x4 token grid
    x = torch.randn(2, 4, 8, 8, generator=_rng(2))
    assert d.bottleneck(x, torch.tensor([0.3, 0.7]), _cond(2)).shape == (2, 32, 4, 4)
    assert d(x, torch.tensor([0.3, 0.7]), _cond(2)).shape == (2,)

    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                norm_num_groups=8, cross_attention_dim=32, use_linear_projection=True,
                                addition_embed_type="text_time", addition_time_embed_dim=8,
                                projection_class_embeddings_input_dim=6 * 8 + 16)
    sdxl = SDXLDenoiser(unet)
    d = DMD2Discriminator(sdxl)
    assert locate_bottleneck(sdxl)[0] is unet.mid_block
    cond = _cond(2, pooled=16, time_ids=torch.zeros(2, 6))
    feat = d.bottleneck(torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.7]), cond)
    assert feat.shape == (2, 32, 4, 4)
    assert d(torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.7]), cond).shape == (2,)
    assert not unet.mid_block._forward_hooks and not unet.up_blocks[0]._forward_pre_hooks


def test_dmd2_real_fake_logits_equal_two_calls_and_train_the_head_only():
    fake = _sd3_fake()
    d = DMD2Discriminator(fake)
    real_t, fake_t = torch.randn(3, 1, 8, 8, generator=_rng(1)), torch.randn(3, 1, 8, 8, generator=_rng(2))
    sigma, cond = torch.tensor([0.2, 0.5, 0.9]), _cond(3)
    with torch.no_grad():
        sep = d(real_t, sigma, cond), d(fake_t, sigma, cond)
    joint = d.real_fake_logits(real_t, fake_t, sigma, cond)
    for a, b in zip(joint, sep):
        assert a.shape == (3,) and torch.allclose(a, b, atol=1e-5)
    losses.logistic_d_loss(*joint).backward()
    assert all(p.grad is not None for p in d.head.parameters())
    assert all(p.grad is None for p in fake.parameters())  # the body is read without gradients


def test_dmd2_head_follows_dmd2_and_copes_with_other_map_sizes():
    from senseflow.discriminators import DMD2Head

    sdxl_like = DMD2Head(64, 32)  # SDXL@1024: 32x32 bottleneck -> 3 stride-2 blocks to 4x4, then 4x4/4
    assert len(sdxl_like.downs) == 3 and sdxl_like.kernel == (4, 4)
    assert sdxl_like.reduce[1].num_groups == 8  # 64 channels: groups of >= 8 (1280 channels -> 32 groups)
    sd15_like = DMD2Head(16, 8, hidden_channels=24)
    assert len(sd15_like.downs) == 1 and isinstance(sd15_like.proj, torch.nn.Conv2d)
    for side in (8, 4, 2, 1, 16):
        out = sd15_like(torch.randn(3, 16, side, side))
        assert out.shape == (3,) and torch.isfinite(out).all()
    feat = torch.randn(2, 64, 32, 32, requires_grad=True)
    sdxl_like(feat).sum().backward()
    assert feat.grad.abs().sum() > 0


def test_build_discriminator_from_config(dino):
    from senseflow.config import GANConfig

    fake = _sd3_fake()
    assert build_discriminator(GANConfig(kind="none"), fake) is None
    v = build_discriminator(GANConfig(kind="vfm", virtual_batch=2, reference=False, text_condition="pooled_shared"),
                            fake, backbone=dino, image_size=8)
    assert isinstance(v, VFMDiscriminator) and v.text_dim == 32 and v.heads[0].main[0][1].virtual_batch == 2
    assert isinstance(v.cmapper, torch.nn.Linear) and v.cmappers is None and not v.encodes_text
    assert v(_images(2, 1, 8), torch.randn(2, 32), rng=_rng(0)).shape == (2, 5)
    dm = build_discriminator(GANConfig(kind="dmd2"), fake, latent_size=16)
    assert isinstance(dm, DMD2Discriminator) and len(dm.head.downs) == 1  # 16 / patch 2 = 8 -> one block
    assert dm(torch.randn(2, 1, 16, 16), torch.tensor([0.5, 0.5]), _cond(2)).shape == (2,)
    assert math.isclose(float(v.pixel_std[0, 0, 0, 0]), 0.229, rel_tol=1e-6)


# ----------------------------------------------------------------------------- text conditioning
def test_equalized_linear_has_the_authors_init_and_a_sqrt_fan_in_slower_adam_step():
    from senseflow.discriminators import EqualizedLinear

    torch.manual_seed(0)
    eq = EqualizedLinear(768, 64)
    assert torch.equal(eq.bias, torch.zeros(64)) and abs(float(eq.weight.detach().std()) - 1.0) < 0.01  # N(0, 1) raw weights
    x = torch.randn(5, 768)
    assert torch.allclose(eq(x), x @ (eq.weight / math.sqrt(768)).t(), atol=1e-5)
    # one Adam step of lr moves every raw weight by ~lr, so the effective weight moves lr / sqrt(768); a default
    # nn.Linear's effective weight moves lr: the equalized layer learns ~27.7x slower per step
    lin = torch.nn.Linear(768, 64)
    moved = []
    for m, gain in ((eq, 1 / math.sqrt(768)), (lin, 1.0)):
        before = m.weight.detach().clone()
        opt = torch.optim.Adam([m.weight], lr=1e-3)
        m(x).square().mean().backward()
        opt.step()
        moved.append(float((m.weight.detach() - before).abs().mean()) * gain)
    assert 25 < moved[1] / moved[0] < 30


def test_vfm_text_condition_clip_per_head_and_pooled_shared(dino):
    from senseflow.config import GANConfig
    from senseflow.discriminators import EqualizedLinear
    from senseflow.models.clip_text import CLIPTextEmbedder, tiny_clip_text

    fake = _sd3_fake()
    clip = tiny_clip_text(seed=0)  # CLIPTextModelWithProjection of CLIP's architecture, random weights
    assert isinstance(clip, CLIPTextEmbedder) and clip.dim == 24
    v = build_discriminator(GANConfig(kind="vfm", reference=False), fake, backbone=dino, image_size=8,
                            text_encoder=clip)  # text_condition defaults to the authors' "clip"
    assert v.encodes_text and v.text_dim == 24 and v.cmapper is None
    assert len(v.cmappers) == len(v.heads) and all(isinstance(m, EqualizedLinear) for m in v.cmappers)
    # the CLIP tower is D's frozen companion: not trained, not saved, not sharded with D
    assert not any(k.startswith("_text_encoder") or "model.text_model" in k for k in v.state_dict())
    assert {id(p) for p in v.trainable_parameters()}.isdisjoint({id(p) for p in clip.parameters()})
    e = v.encode_text(["a red square", "a cat"])
    assert e.shape == (2, 24) and torch.equal(e, clip.model(clip.tokenizer(
        ["a red square", "a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids).text_embeds)
    out = v(_images(2, 1, 8), e, rng=_rng(0))
    assert out.shape == (2, 5)
    # each head has its own text map: changing one head's layer changes that head's logits only
    v.eval()
    a = v(_images(2, 1, 8), e, augment=False)
    with torch.no_grad():
        v.cmappers[2].bias.add_(1.0)
    b = v(_images(2, 1, 8), e, augment=False)
    changed = (a - b).abs() > 0
    assert changed[:, 2].all() and not changed[:, [0, 1, 3, 4]].any()
    with pytest.raises(ValueError, match="prompts"):
        v.encode_text(None)
    p = build_discriminator(GANConfig(kind="vfm", reference=False, text_condition="pooled_per_head"), fake,
                            backbone=dino, image_size=8)
    assert not p.encodes_text and p.text_dim == 32 and len(p.cmappers) == len(p.heads)


def test_clip_text_loads_offline_only_with_one_clear_error(tmp_path):
    from senseflow.models.clip_text import load_clip_text, tiny_clip_text
    from senseflow.models.loading import ModelNotAvailableError

    with pytest.raises(ModelNotAvailableError, match="gan.text_encoder"):
        load_clip_text("nobody/no-such-clip-model")
    tiny = tiny_clip_text(seed=1)
    tiny.model.save_pretrained(tmp_path / "clip")
    tiny.tokenizer.save_pretrained(tmp_path / "clip")
    loaded = load_clip_text(tmp_path / "clip")
    assert torch.equal(loaded.encode(["a cat"]), tiny.encode(["a cat"]))
