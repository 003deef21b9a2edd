"""Discriminators for the adversarial term: SenseFlow's VFM discriminator and DMD2's bottleneck classifier.

VFMDiscriminator (the SenseFlow paper's vision-foundation-model discriminator)
    A frozen DINOv2 ViT reads decoded pixels at their full resolution (position embeddings resized
    bilinearly, as the authors do).
    The patch-embedding output and the outputs of chosen blocks, each as patch tokens plus the CLS token,
    become 2-D maps; one light head per map (spectral-norm convs, local batch norm, LeakyReLU, stride-2
    downsamples with residual blocks between, circular padding) gives `head_channels` (64) channels. The
    head output is projected on the sum of a text map (the authors': a separate CLIP text embedding through
    one equalized-lr linear layer per head; see gan.text_condition) and a reference map (the same head
    stack, its own weights, on the paired real image's DINOv2 features):
    logits = sum_c out * (cmap + refmap) / sqrt(64), flattened and concatenated over heads -> (B, N).
    DiffAugment (color, translation, cutout) is applied to the judged image only, never to the reference.

DMD2Discriminator (DMD2's GAN classifier, Yin et al. 2024)
    DMD2's GAN classifier: a small conv head (4x4 stride-2 convs, GroupNorm, SiLU, down to 1x1, then a
    1x1 conv to one logit) on the fake score's bottleneck features, read with forward hooks (SD3/FLUX:
    image tokens after the middle transformer block; SDXL: the UNet's mid_block output).

Each discriminator owns its two losses: `generator_loss` (the generator's adversarial term) and
`discriminator_loss` (its own step), built from senseflow.losses (hinge for VFM, logistic for DMD2) on
what it judges (VFM: decoded pixels; DMD2: latents re-noised at a drawn time), read from `GANInputs`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from senseflow import flow, losses
from senseflow.models.base import Conditioning, Denoiser

Tensor = torch.Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIFFAUG_OPS = ("color", "translation", "cutout")
VITL_LAYERS = (2, 5, 8, 10, 14, 19, 23)  # the paper's blocks for the 24-block ViT-L (0-based block indices)
TRANSLATION_RATIO = 1 / 8
CUTOUT_RATIO = 1 / 2
TINY_BACKBONE = "tiny-random"  # a random-init 4-block DINOv2 for CPU smoke runs (no weights, no downloads)


@dataclass
class GANInputs:
    """What one iteration gives a discriminator's losses: the real data, the prompts' conditioning, and the
    Distiller's means of reading generated latents (each discriminator uses the ones it needs).

    text: D's own text embedding of the prompts (gan.text_condition=clip), or None (then cond.pooled).
    decode(latents) -> pixels in [-1, 1]. draw_sigma(n, rng) -> (n,) noise levels on the device, drawn as the
    fake score's training draws them. randn(shape, rng) -> N(0, 1) noise on the device.
    """

    real_latents: Tensor
    real_pixels: Tensor
    cond: Conditioning
    text: Tensor | None
    decode: Callable[[Tensor], Tensor]
    draw_sigma: Callable[[int, torch.Generator], Tensor]
    randn: Callable[[tuple[int, ...], torch.Generator], Tensor]


# ============================================================================= DiffAugment
def _rand(shape, rng: torch.Generator | None, device, dtype=torch.float32) -> Tensor:
    """U[0, 1) drawn on the rng's device (a CPU rng works for CUDA images), moved to `device`."""
    where = rng.device if rng is not None else device
    return torch.rand(shape, generator=rng, device=where, dtype=torch.float32).to(device=device, dtype=dtype)


def _randint(low: int, high: int, shape, rng: torch.Generator | None, device) -> Tensor:
    where = rng.device if rng is not None else device
    return torch.randint(low, high, shape, generator=rng, device=where).to(device)


def _aug_color(x: Tensor, rng: torch.Generator | None) -> Tensor:
    """Per-sample brightness (+U(-.5, .5)), saturation (x U(0, 2) about the channel mean) and contrast
    (x U(.5, 1.5) about the image mean), for images in [-1, 1]. Saturation is a no-op on 1 channel."""
    b = x.shape[0]
    shape = (b, 1, 1, 1)
    x = x + (_rand(shape, rng, x.device, x.dtype) - 0.5)
    grey = x.mean(dim=1, keepdim=True)
    x = grey + (x - grey) * (2 * _rand(shape, rng, x.device, x.dtype))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + (x - mean) * (_rand(shape, rng, x.device, x.dtype) + 0.5)


def _aug_translation(x: Tensor, rng: torch.Generator | None, ratio: float = TRANSLATION_RATIO) -> Tensor:
    """Shift each image by an integer (dy, dx) in [-r, r] (r = ratio of the side, rounded), zero fill."""
    b, c, h, w = x.shape
    ry, rx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    if ry == 0 and rx == 0:
        return x
    dy = _randint(-ry, ry + 1, (b,), rng, x.device)
    dx = _randint(-rx, rx + 1, (b,), rng, x.device)
    padded = F.pad(x, (rx, rx, ry, ry))
    # output (i, j) reads input (i - dy, j - dx), i.e. padded (i - dy + ry, j - dx + rx)
    rows = torch.arange(h, device=x.device)[None, :] + ry - dy[:, None]  # (b, h)
    cols = torch.arange(w, device=x.device)[None, :] + rx - dx[:, None]  # (b, w)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (b, h, w, c): advanced dims come first
    return out.permute(0, 3, 1, 2).contiguous()


def _aug_cutout(x: Tensor, rng: torch.Generator | None, ratio: float = CUTOUT_RATIO) -> Tensor:
    """Zero one (ratio*h) x (ratio*w) rectangle per image, its centre uniform over the image (clipped)."""
    b, _, h, w = x.shape
    sy, sx = max(int(h * ratio + 0.5), 1), max(int(w * ratio + 0.5), 1)
    cy = _randint(0, h + (1 - sy % 2), (b,), rng, x.device)
    cx = _randint(0, w + (1 - sx % 2), (b,), rng, x.device)
    y0, x0 = cy - sy // 2, cx - sx // 2
    ii = torch.arange(h, device=x.device)[None, :]
    jj = torch.arange(w, device=x.device)[None, :]
    in_rows = (ii >= y0[:, None]) & (ii < (y0 + sy)[:, None])  # (b, h)
    in_cols = (jj >= x0[:, None]) & (jj < (x0 + sx)[:, None])  # (b, w)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


_AUGMENTS = {"color": _aug_color, "translation": _aug_translation, "cutout": _aug_cutout}


def diffaugment(x: Tensor, policy: Sequence[str], rng: torch.Generator | None = None) -> Tensor:
    """Differentiable augmentation (DiffAugment, Zhao et al. 2020) of images (B, C, H, W) in [-1, 1].

    `policy` lists ops from "color", "translation", "cutout", applied in that list's order, each with its
    own per-sample random draw. Every op is built from arithmetic, padding and indexing, so gradients flow
    to `x`. Deterministic for a seeded `rng` (its device may differ from x's); C may be 1 or 3.
    """
    if x.ndim != 4:
        raise ValueError(f"diffaugment expects (B, C, H, W) images, got shape {tuple(x.shape)}")
    unknown = [p for p in policy if p not in _AUGMENTS]
    if unknown:
        raise ValueError(f"unknown DiffAugment op(s) {unknown}; choose from {list(DIFFAUG_OPS)}")
    for name in policy:
        x = _AUGMENTS[name](x, rng)
    return x


# ============================================================================= head building blocks
class BatchNormLocal(nn.Module):
    """Batch norm over "virtual" groups of at most `virtual_batch` samples, with no running statistics.

    The batch is split into G = ceil(B / virtual_batch) consecutive groups of as-equal-as-possible size;
    each channel is normalised with the mean and (biased) variance over its group's samples and all
    spatial positions, then scaled and shifted by the affine parameters. Train and eval behave alike.
    Statistics are computed in float32.

    `chunks` (an attribute, 1 by default; set by VFMDiscriminator.real_fake_logits for the duration of a
    call): the batch is read as that many equal, independent sub-batches stacked along dim 0, each grouped
    exactly as it would be on its own, so one call on cat([a, b]) with chunks=2 equals cat([bn(a), bn(b)]).
    """

    def __init__(self, num_features: int, virtual_batch: int = 8, affine: bool = True, eps: float = 1e-5):
        super().__init__()
        if virtual_batch < 1:
            raise ValueError(f"virtual_batch must be >= 1, got {virtual_batch}")
        self.num_features, self.virtual_batch, self.eps = num_features, virtual_batch, eps
        self.chunks = 1
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def _normalise(self, xg: Tensor) -> Tensor:  # (G, n, C, L) float32 -> the same, normalised per (group, C)
        g, n, c, length = xg.shape
        weight = bias = None
        if self.weight is not None:
            weight, bias = self.weight.float(), self.bias.float()
        if n * length == 1:  # one value per statistic: it normalises to 0 (F.batch_norm refuses this case)
            out = xg - xg
            return out if weight is None else torch.addcmul(bias[:, None], out, weight[:, None])
        # torch's fused batch norm with (group, channel) pairs as its channels: much faster than var/var_mean
        # reductions over two non-adjacent dims (the (G, n) <-> (n, G) swap is free for G = 1)
        xt = xg.transpose(0, 1).reshape(n, g * c, length)
        if weight is not None and g > 1:
            weight, bias = weight.repeat(g), bias.repeat(g)
        out = F.batch_norm(xt, None, None, weight, bias, training=True, momentum=0.0, eps=self.eps)
        return out.reshape(n, g, c, length).transpose(0, 1)

    def forward(self, x: Tensor) -> Tensor:
        shape, dtype = x.shape, x.dtype
        b, c, k = shape[0], shape[1], self.chunks
        if b % k:
            raise ValueError(f"BatchNormLocal with chunks={k} got a batch of {b}, not a multiple of {k}")
        flat = x.reshape(b, c, -1)
        if dtype != torch.float32:
            flat = flat.float()
        n = b // k  # samples per chunk, split into `groups` consecutive groups: r of size q + 1, then q
        groups = math.ceil(n / self.virtual_batch)
        q, r = divmod(n, groups)
        if r == 0:
            out = self._normalise(flat.reshape(k * groups, q, c, -1)).reshape(b, c, -1)
        else:  # uneven: the (q + 1)-sized groups of every chunk in one call, the q-sized ones in another
            per_chunk = flat.reshape(k, n, c, -1)
            cut = r * (q + 1)
            big = self._normalise(per_chunk[:, :cut].reshape(k * r, q + 1, c, -1)).reshape(k, cut, c, -1)
            small = self._normalise(per_chunk[:, cut:].reshape(k * (groups - r), q, c, -1)).reshape(k, n - cut, c, -1)
            out = torch.cat([big, small], dim=1).reshape(b, c, -1)
        out = out.reshape(shape)
        return out if dtype == torch.float32 else out.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, virtual_batch={self.virtual_batch}, eps={self.eps}"


SMALL_MAP = 64  # HeadConv2d computes maps of at most this many positions as one GEMM


class HeadConv2d(nn.Conv2d):
    """nn.Conv2d for the discriminator heads ('same' circular padding for k > 1): the same parameters and
    the same sums, computed for small maps as one GEMM over (sample, position) rows.

    On maps of h * w <= SMALL_MAP positions (ungrouped, undilated) the wrapped-around k x k neighbourhood of
    every output position is gathered with one index_select (k = 1: the map itself, as rows) and multiplied
    with the weight in one addmm. At the VFM heads' 4x4..1x1 token maps oneDNN's conv and F.pad's circular
    mode (a dozen slice copies each way) cost far more than their arithmetic; this path is ~2-3x faster
    forward + backward on a CPU. Larger maps take the stock F.pad + conv2d path.
    """

    def _taps(self, h: int, w: int, device: torch.device) -> tuple[Tensor, int, int]:
        """Flat source index (ho * wo * kh * kw,) in (oy, ox, ky, kx) order, and the output size."""
        key = (h, w, device)
        cache = self.__dict__.setdefault("_tap_cache", {})
        if key not in cache:
            (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
            ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
            rows = (torch.arange(ho)[:, None, None, None] * sh + torch.arange(kh)[None, None, :, None] - ph) % h
            cols = (torch.arange(wo)[None, :, None, None] * sw + torch.arange(kw)[None, None, None, :] - pw) % w
            cache[key] = ((rows * w + cols).reshape(-1).to(device), ho, wo)
        return cache[key]

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        h, w = input.shape[-2:]
        pointwise = self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)
        if (input.ndim != 4 or h * w > SMALL_MAP or self.groups != 1 or self.dilation != (1, 1)
                or not (pointwise or self.padding_mode == "circular")):
            return super()._conv_forward(input, weight, bias)
        b, c = input.shape[:2]
        rows = input.reshape(b, c, h * w).transpose(1, 2)  # (B, hw, C)
        if pointwise:
            ho, wo = h, w
            rows = rows.reshape(b * h * w, c)
        else:
            idx, ho, wo = self._taps(h, w, input.device)
            rows = rows.index_select(1, idx).reshape(b * ho * wo, -1)  # (B * ho * wo, kh * kw * C)
        w2 = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)  # (out, kh * kw * C), the rows' order
        out = rows @ w2.t() if bias is None else torch.addmm(bias, rows, w2.t())
        return out.reshape(b, ho, wo, -1).permute(0, 3, 1, 2).contiguous()


def sn_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Module:
    """A spectral-normalised Conv2d ('same' circular padding for k > 1; one power iteration per step)."""
    conv = HeadConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                      padding_mode="circular" if kernel_size > 1 else "zeros")
    return spectral_norm(conv)


def _conv_bn_act(channels_in: int, channels_out: int, kernel_size: int, virtual_batch: int) -> nn.Sequential:
    return nn.Sequential(sn_conv(channels_in, channels_out, kernel_size), BatchNormLocal(channels_out, virtual_batch),
                         nn.LeakyReLU(0.2))


class _Residual(nn.Module):
    """(x + f(x)) / sqrt(2) with f = SN 3x3 conv, local batch norm, LeakyReLU(0.2)."""

    def __init__(self, channels: int, virtual_batch: int):
        super().__init__()
        self.body = _conv_bn_act(channels, channels, 3, virtual_batch)

    def forward(self, x: Tensor) -> Tensor:
        return (x + self.body(x)) * (1 / math.sqrt(2))


class _Down(nn.Module):
    """SN 3x3 stride-2 conv; a map already 1 position high or wide passes unchanged (never below 1x1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = sn_conv(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return x if min(x.shape[-2:]) < 2 else self.conv(x)


class DiscHead(nn.Module):
    """One feature map (B, in, h, w) -> (B, out, h', w').

    stem [SN 1x1 conv, BNL, LReLU] -> down -> res -> down -> res -> down -> SN 1x1 conv to `out_channels`,
    with `downsample` (<= 3 by default) stride-2 convs in the first slots and residual blocks between the
    three slots, as in SenseFlow's 2-D head. `hidden_channels` defaults to the input width (the paper).
    """

    def __init__(self, in_channels: int, out_channels: int = 64, hidden_channels: int | None = None,
                 downsample: int = 3, virtual_batch: int = 8):
        super().__init__()
        if downsample < 0:
            raise ValueError(f"downsample must be >= 0, got {downsample}")
        hidden = hidden_channels or in_channels
        slots = max(3, downsample)
        layers: list[nn.Module] = [_conv_bn_act(in_channels, hidden, 1, virtual_batch)]
        for i in range(slots):
            if i < downsample:
                layers.append(_Down(hidden))
            if i < slots - 1:
                layers.append(_Residual(hidden, virtual_batch))
        self.main = nn.Sequential(*layers)
        self.out = sn_conv(hidden, out_channels, 1)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.main(x))


class EqualizedLinear(nn.Module):
    """A linear layer with an equalized learning rate (StyleGAN's): weights drawn from N(0, 1) and scaled by
    1/sqrt(in_features) at every forward, bias initialised to 0. Its output matches a default-initialised
    nn.Linear in scale, but an Adam step moves it sqrt(in_features) times less (768 inputs: ~28x)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.gain = 1 / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype) * self.gain, self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, gain=1/sqrt({self.in_features})"


TEXT_CONDITIONS = ("clip", "pooled_per_head", "pooled_shared")


# ============================================================================= VFM discriminator
def default_layers(depth: int) -> list[int]:
    """The paper's ViT-L blocks [2, 5, 8, 10, 14, 19, 23] for depth 24; for other depths the same relative
    positions, rounded and deduplicated (ViT-S/B, 12 blocks: [1, 2, 4, 5, 7, 9, 11])."""
    if depth == 24:
        return list(VITL_LAYERS)
    return sorted({round(i * (depth - 1) / 23) for i in VITL_LAYERS})


def downsamples_for(grid: int, wanted: int = 3) -> int:
    """Stride-2 downsamples a `grid`-sized token map allows (each halves it, rounding up, to >= 1)."""
    n, size = 0, grid
    while n < wanted and size >= 2:
        size, n = (size + 1) // 2, n + 1
    return n


def tiny_dinov2(seed: int = 0, hidden_size: int = 32, layers: int = 4, patch_size: int = 2, image_size: int = 8):
    """A random-init tiny Dinov2Model (deterministic in seed; global RNG untouched), for tests and smoke runs."""
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=2,
                       intermediate_size=2 * hidden_size, patch_size=patch_size, image_size=image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Dinov2Model(cfg)


def load_dinov2(source: str | os.PathLike, dtype: torch.dtype | None = None) -> nn.Module:
    """A DINOv2 backbone (transformers Dinov2Model, or Dinov2WithRegistersModel) from a local directory or a
    hub id resolved in the local Hugging Face cache only (never downloads). `TINY_BACKBONE` builds a tiny
    random one. Raises ModelNotAvailableError naming the backbone and how to get it."""
    from transformers import AutoModel

    from senseflow.models.loading import ModelNotAvailableError, local_or_cached_or_raise

    text = os.fspath(source)
    if text == TINY_BACKBONE:
        return tiny_dinov2()
    hint = (f"download it while online (`hf download {text}`; older huggingface_hub: `huggingface-cli download`) "
            f"or set gan.backbone to a local "
            "directory holding a DINOv2 config.json and weights; gan.kind=none or dmd2 needs no backbone")
    folder = local_or_cached_or_raise(text, f"DINOv2 backbone {text!r} for the VFM discriminator", hint)
    try:
        kwargs = {} if dtype is None else {"dtype": dtype}
        model = AutoModel.from_pretrained(str(folder), **kwargs)
    except Exception as err:
        raise ModelNotAvailableError(f"cannot load the DINOv2 backbone {text!r} from {str(folder)!r}: "
                                     f"{type(err).__name__}: {err}; {hint}") from err
    if not hasattr(model, "embeddings") or not hasattr(getattr(model, "encoder", None), "layer"):
        raise ModelNotAvailableError(f"{text!r} loaded as {type(model).__name__}, which is not a DINOv2 ViT; {hint}")
    return model


class VFMDiscriminator(nn.Module):
    """SenseFlow's vision-foundation-model discriminator D(x, c, r) = h(f_DINOv2(x), c, r).

    backbone: a DINOv2 module (transformers Dinov2Model-like: `.embeddings`, `.encoder.layer`, `.config`)
        or a hub id / local directory loaded with `load_dinov2`. It is frozen (requires_grad False) and
        kept in eval mode even when this module is put in train mode; gradients still flow through it to
        the input image (the generator's adversarial loss).
    text_dim: width of the text embedding the heads are conditioned on; None for unconditional use (a learned
        constant map takes its place).
    text_mapper: "per_head" (the authors'): one equalized-lr linear layer per head (`cmappers`); "shared": one
        nn.Linear for all heads (`cmapper`).
    text_encoder: optional frozen module with `encode(prompts) -> (B, text_dim)` (the separate CLIP text
        embedding, senseflow.models.clip_text); `encode_text(prompts)` uses it. It is referenced, not
        registered: it is neither trained, saved nor sharded with D.
    layers: 0-based block indices whose outputs feed heads (None: `default_layers(depth)`); the patch
        embedding output always feeds one more head, first.
    head_channels: width of the projection space (64). hidden_channels: width inside each head (None: the
        backbone width, as in the paper; ~48M parameters per head for ViT-L, so 16 heads ~ 0.8B).
    downsample: stride-2 convs per head (3). With `image_size` (the side of the images that will be judged)
        it is clamped to what the token grid allows, so no conv is built that would never run; without it,
        heads skip any downsample once a map is 1 position high or wide.
    reference: build `refmapper` heads that condition on the paired real image's features.
    checkpoint_backbone: activation-checkpoint each backbone block when gradients are needed (saves memory
        for the generator's backward at 1024^2).

    forward(images, text_embed, ref_images=None, augment=True, rng=None) -> logits (B, N): images and
    ref_images (B, 1 or 3, H, W) in [-1, 1] at the same resolution; text_embed (B, text_dim), or a
    Conditioning whose `pooled` is used. The reference pass runs without gradients (real images, frozen
    backbone). Nothing is cached between calls.
    real_fake_logits(real, fake, text_embed, ref_images=None, augment=True, rng=None) -> the logits of
    both, as two forward calls would give them, in one pass (the discriminator's step; see there).
    """

    def __init__(self, backbone: nn.Module | str | os.PathLike = "facebook/dinov2-large", *, text_dim: int | None,
                 layers: Sequence[int] | None = None, head_channels: int = 64, hidden_channels: int | None = None,
                 virtual_batch: int = 8, diffaug: Sequence[str] = DIFFAUG_OPS, reference: bool = True,
                 downsample: int = 3, image_size: int | tuple[int, int] | None = None,
                 checkpoint_backbone: bool = False, text_mapper: str = "per_head", text_encoder: nn.Module | None = None):
        super().__init__()
        if text_mapper not in ("per_head", "shared"):
            raise ValueError(f"text_mapper must be 'per_head' or 'shared', got {text_mapper!r}")
        if not isinstance(backbone, nn.Module):
            backbone = load_dinov2(backbone)
        self.backbone = backbone.eval().requires_grad_(False)
        cfg = backbone.config
        self.depth = int(cfg.num_hidden_layers)
        self.width = int(cfg.hidden_size)
        self.patch_size = int(cfg.patch_size if isinstance(cfg.patch_size, int) else cfg.patch_size[0])
        self.in_channels = int(getattr(cfg, "num_channels", 3))
        self.num_prefix = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)  # CLS (+ registers)
        layers = default_layers(self.depth) if layers is None else [int(i) for i in layers]
        norm = [i + self.depth if i < 0 else i for i in layers]
        if any(not 0 <= i < self.depth for i in norm) or len(set(norm)) != len(norm):
            raise ValueError(f"layers must be distinct block indices in [0, {self.depth}), got {list(layers)}")
        self.layers = sorted(norm)
        unknown = [p for p in diffaug if p not in DIFFAUG_OPS]
        if unknown:
            raise ValueError(f"unknown DiffAugment op(s) {unknown}; choose from {list(DIFFAUG_OPS)}")
        self.diffaug = list(diffaug)
        self.head_channels = head_channels
        self.reference = reference
        self.checkpoint_backbone = checkpoint_backbone
        if image_size is not None:
            side = min(image_size) if isinstance(image_size, (tuple, list)) else int(image_size)
            downsample = downsamples_for(side // self.patch_size, downsample)
        self.downsample = downsample

        def make_head() -> DiscHead:
            return DiscHead(self.width, head_channels, hidden_channels, downsample, virtual_batch)

        n_maps = len(self.layers) + 1
        self.heads = nn.ModuleList([make_head() for _ in range(n_maps)])
        self.refmappers = nn.ModuleList([make_head() for _ in range(n_maps)]) if reference else None
        self.text_dim = text_dim
        self.text_mapper = text_mapper
        self.cmapper = self.cmappers = None
        if text_dim and text_mapper == "shared":
            self.cmapper = nn.Linear(text_dim, head_channels)
            self.register_parameter("cmap_const", None)
        elif text_dim:
            self.cmappers = nn.ModuleList([EqualizedLinear(text_dim, head_channels) for _ in range(n_maps)])
            self.register_parameter("cmap_const", None)
        else:
            self.cmap_const = nn.Parameter(torch.randn(head_channels) / math.sqrt(head_channels))
        # a tuple keeps the frozen text encoder out of this module's parameters, state_dict and sharding
        self._text_encoder = (text_encoder,) if text_encoder is not None else None
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    # ------------------------------------------------------------------ module plumbing
    def train(self, mode: bool = True) -> "VFMDiscriminator":
        super().train(mode)
        self.backbone.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The heads, refmappers and cmapper: never the backbone."""
        frozen = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    @property
    def encodes_text(self) -> bool:
        """True when D conditions on its own text embedding of the prompts (`encode_text`)."""
        return self._text_encoder is not None

    @property
    def text_encoder(self) -> nn.Module | None:
        """D's own frozen text encoder (kept out of D's parameters, state dict and sharding), or None."""
        return self._text_encoder[0] if self._text_encoder is not None else None

    @torch.no_grad()
    def encode_text(self, prompts: list[str] | None) -> Tensor:
        """D's text embedding (B, text_dim) of the prompts, from its own frozen text encoder (moved to the
        heads' device on first use)."""
        if self._text_encoder is None:
            raise ValueError("this discriminator has no text encoder of its own: pass the pooled prompt embedding")
        if prompts is None:
            raise ValueError("gan.text_condition=clip needs the batch's prompts (Batch.prompts is None)")
        enc = self._text_encoder[0]
        device = self.pixel_mean.device
        if next(enc.parameters()).device != device:
            enc.to(device)
        return enc.encode(list(prompts))

    @property
    def _head_dtype(self) -> torch.dtype:
        return self.heads[0].out.parametrizations.weight.original.dtype

    # ------------------------------------------------------------------ backbone features
    def _prepare(self, images: Tensor) -> Tensor:
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        c, h, w = images.shape[1:]
        if c == 1 and self.in_channels == 3:
            images = images.expand(-1, 3, -1, -1)
        elif c != self.in_channels:
            raise ValueError(f"the backbone takes {self.in_channels}-channel images, got {c} channels")
        if h < self.patch_size or w < self.patch_size:
            raise ValueError(f"images of {h}x{w} are smaller than one {self.patch_size}px patch of the backbone; "
                             "upsample them or use a backbone with a smaller patch")
        x = (images.float() + 1) / 2
        if self.in_channels == 3:
            x = (x - self.pixel_mean) / self.pixel_std
        return x.to(next(self.backbone.parameters()).dtype)

    def _to_map(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """Patch tokens with the CLS token added ("readout add") -> (B, D, h, w) in the heads' dtype."""
        patches = tokens[:, self.num_prefix:] + tokens[:, :1]
        b, n, d = patches.shape
        if n != grid[0] * grid[1]:
            raise RuntimeError(f"backbone gave {n} patch tokens, expected a {grid[0]}x{grid[1]} grid")
        return patches.transpose(1, 2).reshape(b, d, *grid).to(self._head_dtype)

    def position_embeddings(self, grid: tuple[int, int]) -> Tensor:
        """The backbone's position embeddings (1, 1 + gh * gw, D) for a gh x gw patch grid: the learned grid
        resized bilinearly (align_corners=False, computed in float32) as the authors' discriminator does;
        transformers' Dinov2 resizes bicubically. The stored grid is returned as is at its own size."""
        pos = self.backbone.embeddings.position_embeddings
        n = pos.shape[1] - 1
        side = math.isqrt(n)
        if side * side != n:
            raise RuntimeError(f"the backbone's {n} position embeddings do not form a square grid")
        if (side, side) == tuple(grid):
            return pos
        cls_pos, grid_pos = pos[:, :1], pos[:, 1:]
        grid_pos = grid_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
        grid_pos = F.interpolate(grid_pos, size=tuple(grid), mode="bilinear", align_corners=False)
        grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos.dtype)
        return torch.cat([cls_pos, grid_pos], dim=1)

    def embed(self, x: Tensor) -> Tensor:
        """The backbone's embedding layer (transformers' Dinov2[WithRegisters]Embeddings, no mask tokens) with
        `position_embeddings` in place of its bicubic resize: (B, 1 [+ registers] + gh * gw, D)."""
        emb = self.backbone.embeddings
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        patches = emb.patch_embeddings(x)
        h = torch.cat([emb.cls_token.expand(x.shape[0], -1, -1), patches], dim=1)
        h = h + self.position_embeddings(grid)
        registers = getattr(emb, "register_tokens", None)
        if registers is not None:
            h = torch.cat([h[:, :1], registers.expand(h.shape[0], -1, -1), h[:, 1:]], dim=1)
        return emb.dropout(h)

    def features(self, images: Tensor) -> list[Tensor]:
        """The (1 + len(layers)) maps (B, D, H/p, W/p) of images in [-1, 1]: the patch-embedding output, then
        the output of each chosen block. Runs the blocks only up to the last chosen one."""
        x = self._prepare(images)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        h = self.embed(x)  # CLS (+ registers) + patches, position embeddings resized bilinearly
        maps = [self._to_map(h, grid)]
        wanted = set(self.layers)
        use_ckpt = self.checkpoint_backbone and torch.is_grad_enabled() and h.requires_grad
        last = self.layers[-1] + 1 if self.layers else 0
        for i, block in enumerate(self.backbone.encoder.layer[:last]):
            if use_ckpt:
                out = activation_checkpoint(block, h, use_reentrant=False)
            else:
                out = block(h)
            h = out[0] if isinstance(out, tuple) else out  # transformers 4.x blocks return tuples
            if i in wanted:
                maps.append(self._to_map(h, grid))
        return maps

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, text_embed: Tensor | Conditioning | None, ref_images: Tensor | None = None,
                augment: bool = True, rng: torch.Generator | None = None) -> Tensor:
        return self._judge([images], text_embed, ref_images, augment, rng)[0]

    def real_fake_logits(self, real: Tensor, fake: Tensor, text_embed: Tensor | Conditioning | None,
                         ref_images: Tensor | None = None, augment: bool = True,
                         rng: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(D(real), D(fake)) in one pass: the same logits as `self(real, ...)` then `self(fake, ...)`.

        DiffAugment draws from `rng` for real, then for fake, as the two calls would; the frozen
        backbone runs once on the concatenation (with the reference too when no gradient must flow through
        it); the reference features and refmaps are computed once and shared; each head runs once on the
        concatenated maps, its local batch norm grouping real and fake samples separately (chunks=2).
        The only difference from two calls: in train mode each spectral-norm conv does one power
        iteration here where the two calls would do two (one per call). real and fake: (B, C, H, W).
        """
        if real.shape != fake.shape:
            raise ValueError(f"real {tuple(real.shape)} and fake {tuple(fake.shape)} images must have one shape")
        real_logits, fake_logits = self._judge([real, fake], text_embed, ref_images, augment, rng)
        return real_logits, fake_logits

    # ------------------------------------------------------------------ losses
    def frozen_for_generator(self) -> list[nn.Parameter]:
        """The parameters the generator's adversarial pass holds frozen (see `frozen`): the trained part."""
        return self.trainable_parameters()

    def _text_and_reference(self, inputs: GANInputs) -> tuple[Tensor, Tensor | None]:
        text = inputs.text if inputs.text is not None else inputs.cond.pooled
        return text, (inputs.real_pixels if self.reference else None)

    def generator_loss(self, fake_latents: Tensor, inputs: GANInputs, weight: Tensor,
                       rng: torch.Generator | None) -> Tensor:
        """The hinge generator loss mean(-w D(x)) on the generated latents' decoded (augmented) pixels;
        gradients reach the latents through the decoder and the frozen backbone."""
        pixels = inputs.decode(fake_latents)
        text, ref = self._text_and_reference(inputs)
        logits = self(pixels, text, ref_images=ref, augment=True, rng=rng)
        return losses.hinge_g_loss(logits, weight)

    def discriminator_loss(self, fake_latents: Tensor, inputs: GANInputs, weight: Tensor,
                           rng: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """(hinge loss, real logits, fake logits) of D's own step on the real pixels and the generated
        latents' decoded pixels (no gradient to the generator), from one joint pass (`real_fake_logits`)."""
        with torch.no_grad():
            fake = inputs.decode(fake_latents)
        text, ref = self._text_and_reference(inputs)
        real_logits, fake_logits = self.real_fake_logits(inputs.real_pixels, fake, text, ref_images=ref,
                                                         augment=True, rng=rng)
        return losses.hinge_d_loss(real_logits, fake_logits, weight), real_logits, fake_logits

    def _judge(self, images: list[Tensor], text_embed: Tensor | Conditioning | None, ref_images: Tensor | None,
               augment: bool, rng: torch.Generator | None) -> list[Tensor]:
        """Logits (B, N) for each of the k equal-shaped batches in `images`, sharing text and reference."""
        k, b = len(images), images[0].shape[0]
        if isinstance(text_embed, Conditioning):
            text_embed = text_embed.pooled
        n_maps = len(self.heads)
        if self.cmapper is not None or self.cmappers is not None:
            if text_embed is None:
                raise ValueError("this discriminator is text conditioned: pass its text embedding")
            text = text_embed.to(self._head_dtype)
            cmaps = ([self.cmapper(text)] * n_maps if self.cmapper is not None
                     else [m(text) for m in self.cmappers])
        else:
            cmaps = [self.cmap_const.expand(b, -1)] * n_maps
        if self.reference:
            if ref_images is None:
                raise ValueError("reference=True: pass ref_images (the paired real images)")
            if ref_images.shape[0] != b or ref_images.shape[-2:] != images[0].shape[-2:]:
                raise ValueError(f"ref_images {tuple(ref_images.shape)} must match images {tuple(images[0].shape)} "
                                 "in batch size and resolution")
        else:
            ref_images = None
        # one augmentation call per batch, in order: the rng's draws are those of k separate calls
        xs = [diffaugment(x, self.diffaug, rng) if augment and self.diffaug else x for x in images]
        x = xs[0] if k == 1 else torch.cat(xs)
        needs_grad = torch.is_grad_enabled() and x.requires_grad
        ref_feats = None
        if ref_images is not None and not needs_grad and ref_images.shape[1:] == x.shape[1:]:
            with torch.no_grad():  # frozen backbone, no input gradient: the reference rides in the same pass
                both = self.features(torch.cat([x, ref_images.to(x.dtype)]))
            feats, ref_feats = [f[:k * b] for f in both], [f[k * b:] for f in both]
        else:
            feats = self.features(x)
            if ref_images is not None:
                with torch.no_grad():
                    ref_feats = self.features(ref_images)
        refmaps = None if ref_feats is None else [m(f) for m, f in zip(self.refmappers, ref_feats)]
        with self._chunked(self.heads, k):
            outs = [head(feat) for head, feat in zip(self.heads, feats)]
        scale = 1 / math.sqrt(self.head_channels)
        logits = []
        for i, out in enumerate(outs):
            cond = cmaps[i][:, :, None, None]
            c = cond if refmaps is None else cond + refmaps[i]  # (B, C, h, w), shared by the k batches
            logits.append(((out.unflatten(0, (k, b)) * c).sum(dim=2) * scale).flatten(2))  # (k, B, h*w)
        # one cat per batch: fresh tensors, not views of a joint one (FSDP hooks the outputs of this call)
        return [torch.cat([part[i] for part in logits], dim=1) for i in range(k)]

    @staticmethod
    @contextlib.contextmanager
    def _chunked(modules: nn.Module, k: int):
        """Within the block, every BatchNormLocal in `modules` reads its batch as k independent chunks."""
        if k == 1:
            yield
            return
        norms = [m for m in modules.modules() if isinstance(m, BatchNormLocal)]
        before = [m.chunks for m in norms]
        for m in norms:
            m.chunks = k
        try:
            yield
        finally:
            for m, c in zip(norms, before):
                m.chunks = c


# ============================================================================= DMD2's classifier head
class _StopForward(Exception):
    """Raised by a pre-hook to end the fake score's forward once the bottleneck has been read."""


def bottleneck_index(n: int) -> tuple[int, int | None]:
    """Of a transformer's n blocks taken as one sequence, the bottleneck block's index and the next one's
    (None when the bottleneck is the last block)."""
    m = (n - 1) // 2
    return m, (m + 1 if m + 1 < n else None)


def locate_bottleneck(denoiser: Denoiser) -> tuple[nn.Module, nn.Module | None]:
    """(module whose output is the bottleneck, the module run right after it or None).

    UNets (SDXL): `mid_block`, then `up_blocks[0]`. Transformers (SD3: `transformer_blocks`; FLUX: the
    dual-stream then the single-stream blocks, as one sequence): block (n - 1) // 2, then the next block.
    """
    bb = denoiser.backbone
    if getattr(bb, "mid_block", None) is not None:
        ups = getattr(bb, "up_blocks", None)
        return bb.mid_block, (ups[0] if ups is not None and len(ups) else None)
    blocks = list(getattr(bb, "transformer_blocks", None) or []) + list(getattr(bb, "single_transformer_blocks",
                                                                                 None) or [])
    if not blocks:
        raise TypeError(f"no bottleneck found in {type(bb).__name__}: expected a UNet with mid_block or a "
                        "transformer with transformer_blocks")
    m, after = bottleneck_index(len(blocks))
    return blocks[m], (blocks[after] if after is not None else None)


def bottleneck_channels(denoiser: Denoiser) -> int:
    cfg = denoiser.backbone.config
    if getattr(denoiser.backbone, "mid_block", None) is not None:
        return int(cfg.block_out_channels[-1])
    return int(cfg.num_attention_heads * cfg.attention_head_dim)


def feature_size_for(denoiser: Denoiser, latent_size: int | Sequence[int] | None = None) -> tuple[int, int] | None:
    """The bottleneck map's (h, w) for latents of `latent_size` (default: the backbone's configured
    sample_size; None when neither is known, e.g. FLUX, whose config has no sample_size)."""
    bb = denoiser.backbone
    if latent_size is None:
        latent_size = getattr(bb.config, "sample_size", None)
        if latent_size is None:
            return None
    lh, lw = (latent_size, latent_size) if isinstance(latent_size, int) else tuple(latent_size)[-2:]
    if getattr(bb, "mid_block", None) is not None:
        factor = 2 ** sum(1 for blk in bb.down_blocks if getattr(blk, "downsamplers", None))
    else:
        factor = token_stride(denoiser)
    return max(int(lh) // factor, 1), max(int(lw) // factor, 1)


def token_stride(denoiser: Denoiser) -> int:
    """Latent pixels per image token along each side: SD3 its patch size; FLUX 2 (the adapter packs 2x2
    patches; config.patch_size is 1); UNets 1 (their maps are read as maps)."""
    bb = denoiser.backbone
    if getattr(bb, "mid_block", None) is not None:
        return 1
    packed = denoiser.family == "flux" or getattr(bb, "single_transformer_blocks", None) is not None
    return int(getattr(bb.config, "patch_size", 1) or 1) * (2 if packed else 1)


def _tokens_to_map(out, x_shape: torch.Size, stride: int) -> Tensor:
    """A hooked block's output -> (B, D, h, w). Transformer blocks give (text, image) token pairs (diffusers
    SD3/FLUX blocks) or one tensor whose last h*w tokens are the image; UNet blocks give the map itself."""
    if isinstance(out, (tuple, list)):
        out = out[-1]
    if out.ndim == 4:
        return out
    b, n_tokens, d = out.shape
    gh, gw = x_shape[-2] // stride, x_shape[-1] // stride
    if gh * gw == 0 or n_tokens < gh * gw:
        raise RuntimeError(f"cannot fold {n_tokens} tokens into a {gh}x{gw} map (latents {tuple(x_shape[-2:])}, "
                           f"token stride {stride})")
    return out[:, n_tokens - gh * gw:].transpose(1, 2).reshape(b, d, gh, gw)


def _group_count(channels: int, wanted: int = 32, min_per_group: int = 8) -> int:
    """DMD2's 32 groups where the width allows (1280 -> 32 x 40); narrower heads get fewer groups of at least
    `min_per_group` channels, since a group of one channel on a 1x1 map normalises to a constant."""
    need = min(min_per_group, channels)
    return max(g for g in range(1, min(wanted, channels) + 1) if channels % g == 0 and channels // g >= need)


def _conv_gn_silu(c_in: int, c_out: int, kernel, stride) -> nn.Sequential:
    padding = 1 if stride == 2 else 0
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding),
                         nn.GroupNorm(_group_count(c_out), c_out), nn.SiLU())


class DMD2Head(nn.Module):
    """DMD2's `cls_pred_branch`: [Conv 4x4 s2 p1, GroupNorm(32), SiLU] while the map is larger than 4x4,
    then [Conv k x k stride k (k = min(4, side)), GroupNorm, SiLU] to 1x1 and a 1x1 conv to one logit.

    The number of stride-2 blocks is fixed by `feature_size` (the planned bottleneck side). At run time a
    block is skipped once the map is 4 or smaller, a map smaller than the final kernel is zero-padded to
    it, and a map that ends above 1x1 has its logits averaged: other resolutions work, the planned one is
    exactly DMD2's. With `hidden_channels` set, a 1x1 conv first projects to that width.
    """

    def __init__(self, in_channels: int, feature_size: int | tuple[int, int], hidden_channels: int | None = None):
        super().__init__()
        c = hidden_channels or in_channels
        gh, gw = (feature_size, feature_size) if isinstance(feature_size, int) else tuple(feature_size)
        self.proj = nn.Conv2d(in_channels, c, 1) if c != in_channels else nn.Identity()
        downs = []
        while min(gh, gw) > 4:
            downs.append(_conv_gn_silu(c, c, 4, 2))
            gh, gw = gh // 2, gw // 2
        self.downs = nn.ModuleList(downs)
        self.kernel = (max(1, min(4, gh)), max(1, min(4, gw)))
        self.reduce = _conv_gn_silu(c, c, self.kernel, self.kernel)
        self.logit = nn.Conv2d(c, 1, 1)

    def forward(self, feat: Tensor) -> Tensor:
        h = self.proj(feat)
        for down in self.downs:
            if min(h.shape[-2:]) > 4:
                h = down(h)
        ph, pw = max(self.kernel[0] - h.shape[-2], 0), max(self.kernel[1] - h.shape[-1], 0)
        if ph or pw:
            h = F.pad(h, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return self.logit(self.reduce(h)).mean(dim=(1, 2, 3))


class DMD2Discriminator(nn.Module):
    """DMD2's GAN classifier on the fake score's bottleneck features of a (re-noised) sample.

    forward(x_t, sigma, cond) -> logits (B,) runs the fake score's own forward on x_t with a forward hook on
    its bottleneck (see `locate_bottleneck`); the hooks live only for that call (try/finally). With
    `early_exit` a pre-hook on the next block ends the forward there (DMD2 likewise stops before the
    up-blocks); it is skipped when the backbone uses gradient checkpointing. Gradients reach x_t and, if its
    parameters require grad, the fake score body.

    The fake score is referenced, not registered: `parameters()`, `state_dict()` and `.to()` cover the head
    only, and `trainable_parameters()` is the head. DMD2 trains the head jointly with the fake model (the
    classifier loss, weight 1e-2, joins the fake score's loss and optimizer and also reaches its body): the
    Distiller does that with gan.train_fake_score_body (the -dmd2 presets), through
    `real_fake_logits(..., train_body=True)`. Without it the head is trained by the discriminator optimizer
    on the D loss alone and the body by its own denoising loss only. The G step always freezes F and the head.
    """

    def __init__(self, fake_score: Denoiser, *, latent_size: int | Sequence[int] | None = None,
                 feature_size: int | tuple[int, int] | None = None, hidden_channels: int | None = None,
                 early_exit: bool = True):
        super().__init__()
        # tuples keep the fake score and its hooked blocks out of this module's tree (parameters, state_dict)
        self._fake_score = (fake_score,)
        self._hooked = locate_bottleneck(fake_score)
        self.token_stride = token_stride(fake_score)
        size = feature_size or feature_size_for(fake_score, latent_size)
        if size is None:
            raise ValueError(f"{type(fake_score.backbone).__name__} has no sample_size: pass latent_size "
                             "(the latents' side) or feature_size (the bottleneck's side)")
        self.head = DMD2Head(bottleneck_channels(fake_score), size, hidden_channels)
        self.early_exit = early_exit

    @property
    def fake_score(self) -> Denoiser:
        return self._fake_score[0]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def bottleneck(self, x_t: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        """The fake score's bottleneck features (B, D, h, w) at (x_t, sigma, cond)."""
        captured: list = []

        def grab(_module, _args, output):
            captured.append(output)

        def stop(_module, _args):
            raise _StopForward

        tap, after = self._hooked
        handles = [tap.register_forward_hook(grab)]
        checkpointing = bool(getattr(self.fake_score.backbone, "gradient_checkpointing", False))
        if self.early_exit and after is not None and not checkpointing:
            handles.append(after.register_forward_pre_hook(stop))
        try:
            self.fake_score(x_t, sigma, cond)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        if not captured:
            raise RuntimeError(f"the bottleneck hook on {type(tap).__name__} did not fire")
        return _tokens_to_map(captured[-1], x_t.shape, self.token_stride)

    def forward(self, x_t: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        feat = self.bottleneck(x_t, sigma, cond)
        dtype = next(self.head.parameters()).dtype
        return self.head(feat.to(dtype))

    def real_fake_logits(self, real_t: Tensor, fake_t: Tensor, sigma: Tensor,
                         cond: Conditioning, train_body: bool = False) -> tuple[Tensor, Tensor]:
        """(D(real_t), D(fake_t)) for the discriminator's own step: one fake-score forward on the concatenated
        batch, then the head. Equals two `forward` calls up to float rounding (the fake score and the head's
        GroupNorm are per-sample). By default the body is read without gradients (the D loss trains the head
        only); train_body=True keeps them, so the loss also trains the fake score's body (DMD2's recipe,
        gan.train_fake_score_body)."""
        if real_t.shape != fake_t.shape:
            raise ValueError(f"real {tuple(real_t.shape)} and fake {tuple(fake_t.shape)} inputs must have one shape")
        with contextlib.nullcontext() if train_body else torch.no_grad():
            feat = self.bottleneck(torch.cat([real_t, fake_t]), torch.cat([sigma, sigma]),
                                   Conditioning.cat([cond, cond]))
        logits = self.head(feat.to(next(self.head.parameters()).dtype))
        real_logits, fake_logits = logits.chunk(2)
        return real_logits, fake_logits

    # ------------------------------------------------------------------ losses
    def frozen_for_generator(self) -> list[nn.Parameter]:
        """The parameters the generator's adversarial pass holds frozen (see `frozen`): the head and the fake
        score's body it reads."""
        return self.trainable_parameters() + list(self.fake_score.parameters())

    def generator_loss(self, fake_latents: Tensor, inputs: GANInputs, weight: Tensor,
                       rng: torch.Generator | None) -> Tensor:
        """The non-saturating logistic generator loss on the generated latents re-noised at a drawn time
        (inputs.draw_sigma, then fresh noise)."""
        t = inputs.draw_sigma(fake_latents.shape[0], rng)
        x_t = flow.interpolate(fake_latents, inputs.randn(fake_latents.shape, rng), t)
        return losses.logistic_g_loss(self(x_t, t, inputs.cond), weight)

    def discriminator_loss(self, fake_latents: Tensor, inputs: GANInputs, weight: Tensor,
                           rng: torch.Generator | None, train_body: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """(logistic loss, real logits, fake logits) on the real and the generated latents re-noised at one
        drawn time (fresh noise for each), from one joint pass; train_body: see `real_fake_logits`."""
        t = inputs.draw_sigma(fake_latents.shape[0], rng)
        real_t = flow.interpolate(inputs.real_latents, inputs.randn(fake_latents.shape, rng), t)
        fake_t = flow.interpolate(fake_latents, inputs.randn(fake_latents.shape, rng), t)
        real_logits, fake_logits = self.real_fake_logits(real_t, fake_t, t, inputs.cond, train_body=train_body)
        return losses.logistic_d_loss(real_logits, fake_logits, weight), real_logits, fake_logits


# ============================================================================= shared helpers
@contextlib.contextmanager
def frozen(params):
    """Within the block, the given parameters do not require grad (restored after, also on error).

    For a forward whose graph must carry gradients to the inputs only (the generator's adversarial term):
    autograd records no parameter-gradient work, and the parameters' `.grad` stay untouched. The graph
    built inside stays valid after the block, so backward may run later."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# ============================================================================= factory
def pooled_dim(denoiser: Denoiser) -> int | None:
    """Width of the family's pooled text vector (Conditioning.pooled), read from the backbone's config."""
    cfg = denoiser.backbone.config
    if getattr(cfg, "pooled_projection_dim", None):
        return int(cfg.pooled_projection_dim)  # SD3 (CLIP-L + CLIP-G), FLUX (CLIP-L)
    if getattr(cfg, "projection_class_embeddings_input_dim", None) and getattr(cfg, "addition_time_embed_dim", None):
        return int(cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim)  # SDXL text_embeds
    return None


def build_discriminator(gan, fake_score: Denoiser, *, text_dim: int | None = None,
                        backbone: nn.Module | None = None, image_size: int | Sequence[int] | None = None,
                        latent_size: int | Sequence[int] | None = None,
                        hidden_channels: int | None = None, text_encoder: nn.Module | None = None) -> nn.Module | None:
    """The discriminator a GANConfig (`gan`) asks for, or None for kind "none".

    For the Distiller's `make_discriminator(fake_score)`:
        functools.partial(build_discriminator, cfg.gan, image_size=cfg.model.resolution,
                          latent_size=bundle.latent_shape[-2:])
    vfm: text_dim defaults to the fake score's pooled width (`pooled_dim`); `backbone` (a module) overrides
    gan.backbone; image_size (the judged images' side) clamps the heads' downsamples to the token grid.
    dmd2: latent_size sizes the head for the bottleneck map (default: the backbone's sample_size).
    hidden_channels: width inside the heads (None: the paper's / DMD2's, i.e. the feature width).
    text_encoder: gan.text_condition "clip": D's own frozen text encoder (`encode(prompts)`, `dim`); default: loaded
    from gan.text_encoder (senseflow.models.clip_text, local files only). Its width replaces text_dim.
    """
    if gan.kind == "none":
        return None
    if gan.kind == "vfm":
        condition = getattr(gan, "text_condition", "pooled_shared")
        if condition not in TEXT_CONDITIONS:
            raise ValueError(f"gan.text_condition must be one of {TEXT_CONDITIONS}, got {condition!r}")
        if condition == "clip":
            if text_encoder is None:
                from senseflow.models.clip_text import load_clip_text

                text_encoder = load_clip_text(gan.text_encoder)
            text_dim = text_encoder.dim
        else:
            text_encoder = None
        return VFMDiscriminator(backbone if backbone is not None else gan.backbone,
                                text_mapper="shared" if condition == "pooled_shared" else "per_head",
                                text_encoder=text_encoder,
                                text_dim=text_dim if text_dim is not None else pooled_dim(fake_score),
                                layers=gan.layers, head_channels=gan.head_channels, hidden_channels=hidden_channels,
                                virtual_batch=gan.virtual_batch, diffaug=gan.diffaug, reference=gan.reference,
                                image_size=image_size)
    if gan.kind == "dmd2":
        return DMD2Discriminator(fake_score, latent_size=latent_size, hidden_channels=hidden_channels)
    raise ValueError(f"unknown gan.kind {gan.kind!r}")
