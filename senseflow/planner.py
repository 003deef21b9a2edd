"""Memory and compute of one run at full size, without weights: `plan(cfg, gpus=8, gpu_mem_gib=80)`.

The networks are the published architectures (senseflow.models.published) built under torch's
FakeTensorMode: tensors carry shapes, dtypes and devices but no storage, so a 12B-parameter model costs
nothing to build. One training iteration of the real `Distiller` (its own methods, in its own order) is
then traced on them:

* memory by `LiveBytes`, which follows every storage the iteration creates until it is freed and reports
  each component's peak, once with gradient checkpointing of G and F and once without; under bf16 autocast
  with CUDA autocast's fp32 functions (`_cuda_autocast_policy`), as the GPU run would hold them;
* FLOPs by component, in the same pass (`measure_iteration`), by torch's FLOP formulas applied to each op
  as dispatched (matmuls, convolutions and attention, forward and backward; the CPU's fused attention
  counted as the CUDA kernels are: `flop_counter`); equal to torch's FlopCounterMode's count of the same
  iteration, which is not used for the trace because it decomposes operators and so changes the memory.

The denoisers are traced with their stacks of identical blocks cut short (the first, a representative and
the last block of each run) and the trace is extended to the full depth exactly
(`senseflow.depth_extension`): about four times fewer operators for the same figures. The two halves
(checkpointing on, with ISG's FLOPs counted apart; off) run in two processes where there are two cores (`trace`),
and a trace is cached by everything it depends on (`cached_trace`).

Data-dependent reads (`float(loss)` for logging, the omega > 0 test) have no value under fake tensors;
they read 1.0 here (`_ScalarReads`), so every branch that costs compute is taken.

What is per GPU, from those traces and the parameter counts (bytes = count x dtype size):

    resident   = teacher + VAE + text encoders + DINOv2 backbone       (model.dtype, replicated)
    trainable  = G + F + D heads                                        (train.trainable_dtype)
    gradients  = the largest of G, F, D (each network's gradients are freed after its own step)
    optimizer  = 2 states per trainable parameter: trainable dtype (torch AdamW) or 1 byte + a
                 4-byte absmax per 256-value block (bitsandbytes AdamW8bit, optim.eight_bit)
    fsdp       : (trainable + gradients + optimizer) / shard group, plus two gathered units in the compute dtype
    ddp        : all of it on every GPU
    activations: the traced peak of activations and temporaries at the per-GPU batch

Iteration time = FLOPs per GPU / (peak dense bf16 FLOP/s x model-FLOPs utilisation); communication is
not modelled.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from senseflow import depth_extension
from senseflow.config import RunConfig
from senseflow.models import published
from senseflow.precision import DTYPES, HEAD_DTYPE, cast

GIB = 2 ** 30
# Peak dense bf16 tensor-core throughput (vendor data sheets: A100 SXM 312 TFLOP/s, H100 SXM 989 TFLOP/s).
PEAK_BF16 = {"A100": 312e12, "H100": 989e12}
DEFAULT_MFU = 0.35
HEADROOM_GIB = 3.0  # CUDA context, NCCL buffers and allocator fragmentation, kept free on each GPU
EIGHT_BIT_BYTES = 2 * (1 + 4 / 256)  # two uint8 states + one fp32 absmax per 256-value block each
TEXT_TOKENS = {"sd3": 77 + 256, "flux": 512, "sdxl": 77}  # the pipelines' sequence lengths (loading.py)


class PlanError(ValueError):
    """A run the planner cannot describe (not a paper teacher, or a bad layout)."""


# ----------------------------------------------------------------------------- fake-tensor helpers
_DEVICE = torch.ops.prim.device.default
_SCALAR = torch.ops.aten._local_scalar_dense.default


class _ScalarReads(TorchDispatchMode):
    """Reading a fake tensor's value (float(), bool(), .item()) gives 1.0 instead of raising."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is _SCALAR:
            return 1.0 if args[0].dtype.is_floating_point else 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _scalar_reads_answered_above():
    """While a LiveBytes above it answers fake tensors' scalar reads, the `_ScalarReads` of `_fake_mode`
    steps aside: one Python dispatch layer fewer for every op (about 15 us of the 100-odd a fake op costs)."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode, _pop_mode_temporarily

    if isinstance(_get_current_dispatch_mode(), _ScalarReads):
        with _pop_mode_temporarily():
            yield
    else:
        yield


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages created inside this mode that are still alive, and their peak.

    Every op's outputs are followed by their storage (views share one); a storage is released when its
    last tensor goes (a weak reference's callback). An output that shares the storage of one of the op's
    inputs (a view such as `t` of a weight, an in-place update of an optimizer state) is not new memory:
    only storages the op itself created are followed, so tensors made before the mode was entered
    (parameters, buffers, optimizer states) are never counted, however often they are viewed. Works on
    fake tensors (their storages have sizes but no memory) as on real ones. `peak` can be reset to the
    current level between phases.

    count_flops=True also adds up `flops`: torch's FLOP formulas (`flop_counter`'s, attention on the CPU
    included) applied to each op as it is dispatched. Unlike FlopCounterMode this decomposes nothing, so the
    memory is the same with or without counting, and one pass gives both.

    A fake tensor's scalar read (float(), .item()) reads 1.0 here, as under `_ScalarReads`.

    Optimizer steps marked with `step_begin`/`step_end` are also followed apart (`steps_apart`): what a
    step creates and frees within itself (torch AdamW's temporaries) depends on the optimizer and on how
    the parameters are sharded, so the planner scales it per layout (`Trace.component_peaks`)."""

    def __init__(self, count_flops: bool = False, recorder=None, within=None):
        super().__init__()
        self.recorder = recorder  # a depth_extension.DepthRecorder: the events, for a cut trace's full depth
        self.within = within      # a FlopsWithin: also counts the FLOPs of one method apart
        self.live = 0
        self.peak = 0
        self.flops = 0
        self._outside = 0                    # the peak since reset_peak apart from the optimizer steps
        self._steps: list[list[int]] = []    # [level at the start, peak above it] of each step since reset_peak
        self._stepping = False
        self._refs: dict[int, weakref.ref] = {}
        self._formulas = flop_counter().flop_registry if count_flops else None

    def reset_peak(self) -> None:
        self.peak = self._outside = self.live
        self._steps = []
        if self.recorder is not None:
            self.recorder.boundary()

    def step_begin(self) -> None:
        self._outside = max(self._outside, self.live)
        self._steps.append([self.live, 0])
        self._stepping = True
        if self.recorder is not None:
            self.recorder.step_begin()

    def step_end(self) -> None:
        self._stepping = False
        if self.recorder is not None:
            self.recorder.step_end()

    def steps_apart(self) -> tuple[int, list[tuple[int, int]]]:
        """Since `reset_peak`: the peak apart from the optimizer steps, and each step's (level at its start,
        own peak above that)."""
        return self._outside, [tuple(s) for s in self._steps]

    def _follow(self, t: torch.Tensor, owner=None) -> None:
        st = t.untyped_storage()
        key = st._cdata
        if key in self._refs:
            return
        n = st.nbytes()
        recorder = self.recorder

        def gone(_ref, key=key, n=n):
            if self._refs.pop(key, None) is not None:
                self.live -= n
                if recorder is not None:
                    recorder.died(key, n)

        self._refs[key] = weakref.ref(st, gone)
        self.live += n
        self.peak = max(self.peak, self.live)
        if self._stepping:
            step = self._steps[-1]
            step[1] = max(step[1], self.live - step[0])
        else:
            self._outside = max(self._outside, self.live)
        if recorder is not None:
            recorder.born(key, n, owner)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is _DEVICE:  # asked of every tensor by the autograd engine and autocast: no storage, no FLOPs
            mode = getattr(args[0], "fake_mode", None)  # a fake tensor's answer, as FakeTensorMode gives it
            if mode is not None:
                return torch.device("meta") if mode.in_kernel_invocation else args[0].fake_device
            return func(*args)
        if func is _SCALAR and getattr(args[0], "fake_mode", None) is not None:
            return 1.0 if args[0].dtype.is_floating_point else 1
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and t.layout == torch.strided}
        per_parameter = (self.recorder is not None and isinstance(out, (list, tuple)) and args
                         and isinstance(args[0], (list, tuple)) and func._opname.startswith("_foreach_"))
        for i, t in enumerate(tree_leaves(out)):
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in inputs:
                self._follow(t, self.recorder.owner_of(args[0][i]) if per_parameter and i < len(args[0]) else None)
        if self._formulas is not None:
            formula = self._formulas.get(func._overloadpacket)
            if formula is not None:
                f = int(formula(*args, **(kwargs or {}), out_val=out))
                self.flops += f
                if self.recorder is not None:
                    f = self.recorder.add_flops(f)
                if self.within is not None and self.within.inside():
                    self.within.flops += f
        return out


class FlopsWithin:
    """While active, the FLOPs of everything one method of an object runs: the ops dispatched while it runs
    and, in the backward pass, the ops of the autograd nodes it created (their sequence numbers). Counted
    by the LiveBytes given it (`within=`). The planner counts ISG's FLOPs so (`Distiller._isg_term`): its
    teacher's forwards and the backward of its loss, in the same pass as the rest."""

    def __init__(self, owner, name: str):
        self.owner, self.name = owner, name
        self.flops = 0
        self._running = False
        self._ranges: list[tuple[int, int]] = []

    def __enter__(self) -> "FlopsWithin":
        method = getattr(self.owner, self.name)

        def counted(*args, **kwargs):
            lo = torch._C._autograd._get_sequence_nr()
            self._running = True
            try:
                return method(*args, **kwargs)
            finally:
                self._running = False
                self._ranges.append((lo, torch._C._autograd._get_sequence_nr()))

        setattr(self.owner, self.name, counted)
        return self

    def __exit__(self, *exc) -> None:
        delattr(self.owner, self.name)

    def inside(self) -> bool:
        node = torch._C._current_autograd_node()
        if node is None:
            return self._running
        seq = node._sequence_nr()
        return any(lo <= seq < hi for lo, hi in self._ranges)


class CachedText(nn.Module):
    """A text encoder stand-in returning embeddings of the family's shapes (what cached prompt embeddings
    would be); the real encoders' cost is planned separately."""

    def __init__(self, family: str, tokens: int, width: int, pooled: int):
        super().__init__()
        self.family, self.tokens, self.width, self.pooled = family, tokens, width, pooled

    def encode(self, prompts):
        from senseflow.models.base import Conditioning

        b = len(prompts)
        extra = {"time_ids": torch.zeros(b, 6)} if self.family == "sdxl" else {}
        return Conditioning(torch.zeros(b, self.tokens, self.width), torch.zeros(b, self.pooled), extra)


# ----------------------------------------------------------------------------- the run's networks
@dataclass
class RunParts:
    """Architecture names of a run's networks and the overrides that cut them down (bench sizes)."""

    denoiser: str
    vae: str
    text: tuple[str, ...]
    backbone: str | None
    overrides: dict = field(default_factory=dict)
    text_tokens: int = 0


def run_parts(cfg: RunConfig, blocks: int | None = None, text_tokens: int | None = None) -> RunParts:
    """The published architectures a config trains; `blocks` keeps only that many transformer blocks."""
    parts = published.family_parts(cfg.model.family, cfg.model.teacher)
    if parts is None:
        raise PlanError(f"model.teacher={cfg.model.teacher!r} (family {cfg.model.family}) is not one of the paper's "
                        f"teachers the planner knows: {', '.join(t for _, t in published.FAMILY_PARTS)}")
    backbone = None
    if cfg.gan.kind == "vfm":
        backbone = published.BACKBONES.get(cfg.gan.backbone)
        if backbone is None:
            raise PlanError(f"gan.backbone={cfg.gan.backbone!r} is not a published DINOv2 the planner knows: "
                            f"{', '.join(published.BACKBONES)}")
    overrides: dict = {}
    if blocks is not None:
        if cfg.model.family == "sd3":
            dual = published.ARCHITECTURES[parts[0]].config["dual_attention_layers"]
            overrides = dict(num_layers=blocks, dual_attention_layers=tuple(i for i in dual if i < blocks))
        elif cfg.model.family == "flux":
            overrides = dict(num_layers=blocks, num_single_layers=blocks)
        else:
            raise PlanError("cut-down block counts are for the transformer families (sd3, flux)")
    tokens = text_tokens or TEXT_TOKENS[cfg.model.family]
    if cfg.model.family == "sd3" and not cfg.model.with_t5:
        tokens = 77 + 256  # zeros take T5's place
    return RunParts(parts[0], parts[1], parts[2], backbone, overrides, tokens)


def _text_shapes(family: str, arch_cfg: dict) -> tuple[int, int]:
    """(token width, pooled width) of the family's Conditioning."""
    if family == "sdxl":
        return arch_cfg["cross_attention_dim"], arch_cfg["projection_class_embeddings_input_dim"] - 6 * arch_cfg[
            "addition_time_embed_dim"]
    return arch_cfg["joint_attention_dim"], arch_cfg["pooled_projection_dim"]


def materialize(module: nn.Module, device: str = "cpu") -> nn.Module:
    """Give a meta-device module storage-less tensors on `device` (under FakeTensorMode: fake tensors, no
    initialisation cost), parameter by parameter; values are undefined."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and p.device.type == "meta":
                sub._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device),
                                                     requires_grad=p.requires_grad)
        for name, b in list(sub._buffers.items()):
            if b is not None and b.device.type == "meta":
                sub._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=device)
    return module


@contextlib.contextmanager
def _no_power_iterations_on_meta():
    """`spectral_norm` runs 15 power iterations when it is applied, to start u and v near the top singular
    vectors. On the meta device (where the planner builds every network) they compute nothing, slowly:
    meta tensors run them through Python reference kernels, seconds per discriminator. While this is active
    they are skipped on meta tensors only; u and v keep their shapes, and the power iteration of each
    training step (which the traces follow) is untouched."""
    from torch.nn.utils import parametrizations

    cls = getattr(parametrizations, "_SpectralNorm", None)
    original = getattr(cls, "_power_method", None)
    if original is None:  # another torch: the builds are just slower
        yield
        return

    def power_method(self, weight_mat, n_power_iterations):
        if weight_mat.device.type != "meta":
            original(self, weight_mat, n_power_iterations)

    cls._power_method = power_method
    try:
        yield
    finally:
        cls._power_method = original


def _real_mode(fake: bool):
    """Leave FakeTensorMode (to build on the meta device) when tracing; nothing otherwise."""
    if not fake:
        return contextlib.nullcontext()
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    return unset_fake_temporarily()


def random_init(module: nn.Module, device) -> nn.Module:
    """A meta-device module given real tensors on `device`: parameters N(0, 0.02), floating buffers ones (a
    smoke run needs finite numbers, not a good model; a buffer such as a pixel std must not be near zero),
    integer buffers their only meaningful values: position ids 0, 1, 2, ... along the last axis (CLIP's text
    tower looks its position embeddings up with them; left uninitialised they index out of range), any other
    zeros."""
    materialize(module, device)
    with torch.no_grad():
        for t in module.parameters():
            if t.is_floating_point():
                t.normal_(0.0, 0.02)
        for name, t in module.named_buffers():
            if t.is_floating_point():
                t.fill_(1.0)
            elif name.rsplit(".", 1)[-1] == "position_ids":
                t.copy_(torch.arange(t.shape[-1], device=t.device).expand_as(t))
            else:
                t.zero_()
    return module


def build_distiller(cfg: RunConfig, parts: RunParts, *, fake: bool, checkpointing: bool = False,
                    device: str | torch.device | None = None):
    """The run's Distiller on the published architectures, with G and F at the trainable dtype and the
    teacher, VAE and backbone at model.dtype. fake=True (inside a FakeTensorMode): every network is built
    on the meta device and given fake CPU tensors (no initialisation); fake=False: random init on the CPU,
    or on `device` (built on meta, then filled there: a full-size model never passes through host memory).

    Returns (distiller, text_stub)."""
    from senseflow.world import make_discriminator_factory
    from senseflow.distill import Distiller
    from senseflow.models.flux import FluxDenoiser
    from senseflow.models.loading import sigma_table_for
    from senseflow.models.sd3 import SD3Denoiser
    from senseflow.models.sdxl import SDXLDenoiser
    from senseflow.models.vae import VAECodec

    family = cfg.model.family
    model_dtype = DTYPES[cfg.model.dtype]
    train_dtype = DTYPES[cfg.train.trainable_dtype]
    if fake:  # 8-bit states are counted from the parameter counts; bitsandbytes need not be here to trace
        cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"eight_bit": False})})
    where = "meta" if fake or device is not None else "cpu"
    if fake:
        ready = materialize
    elif device is not None:
        if torch.device(device).type == "cuda":
            from senseflow import cuda_kernels

            cuda_kernels.configure()  # as training does

        def ready(m):
            return random_init(m, device)
    else:
        def ready(m):
            return m

    def make(name, **kw):
        with _real_mode(fake):  # meta kernels are cheap; the same ops under FakeTensorMode are not
            module = published.build(name, device=where, dtype=model_dtype, **kw)
        return ready(module)

    table = sigma_table_for(family)
    backbone_mod = make(parts.denoiser, **parts.overrides)
    teacher = {"sd3": SD3Denoiser, "flux": FluxDenoiser}.get(family)
    teacher = teacher(backbone_mod) if teacher is not None else SDXLDenoiser(backbone_mod, table)
    codec = VAECodec(make(parts.vae))
    arch_cfg = {**published.ARCHITECTURES[parts.denoiser].config, **parts.overrides}
    width, pooled = _text_shapes(family, arch_cfg)
    text = CachedText(family, parts.text_tokens, width, pooled)
    make_d = None
    if cfg.gan.kind != "none":
        dino = make(parts.backbone) if parts.backbone else "unused"
        lat = cfg.model.resolution // codec.downsample_factor
        clip = _disc_text_tower(cfg, make)
        factory = make_discriminator_factory(cfg, dino, pooled, cfg.model.resolution, (lat, lat), text_encoder=clip)

        def make_d(fake_score):
            with _real_mode(fake), torch.device(where), _no_power_iterations_on_meta():
                d = factory(fake_score)
            return ready(d)

    def prepare(d) -> None:
        cast(d.generator, train_dtype)
        cast(d.fake_score, train_dtype)
        if d.discriminator is not None:  # its trained part, buffers too (spectral norm's u, v): not the backbone
            backbone = getattr(d.discriminator, "backbone", None)
            keep = {id(t) for t in (list(backbone.parameters()) + list(backbone.buffers()))} if backbone else set()
            for t in list(d.discriminator.parameters()) + list(d.discriminator.buffers()):
                if id(t) not in keep and t.is_floating_point():
                    t.data = t.data.to(HEAD_DTYPE)  # fp32 whatever train.trainable_dtype is
        if checkpointing:
            d.generator.enable_gradient_checkpointing()
            d.fake_score.enable_gradient_checkpointing()
            if hasattr(d.discriminator, "checkpoint_backbone"):
                d.discriminator.checkpoint_backbone = True

    distiller = Distiller(cfg, teacher, text, codec, table, make_discriminator=make_d, prepare=prepare)
    return distiller, text


def make_batch(cfg: RunConfig, distiller, text: CachedText, batch_size: int, device: str = "cpu"):
    from senseflow.distill import Batch

    c, f = distiller.codec.latent_channels, distiller.codec.downsample_factor
    lat = cfg.model.resolution // f
    with torch.device(device):
        latents = torch.randn(batch_size, c, lat, lat)
        pixels = torch.rand(batch_size, 3, cfg.model.resolution, cfg.model.resolution) * 2 - 1
        cond = text.encode([""] * batch_size)
        cond = cond.replace(prompt_embeds=torch.randn_like(cond.prompt_embeds), pooled=torch.randn_like(cond.pooled))
    return Batch(latents, pixels, cond, [""] * batch_size)


def warm_optimizers(distiller) -> None:
    """Create every optimizer's state (as after the first iteration) with zero gradients, so a trace or a
    measurement sees the steady state. On fake tensors torch's AdamW gets its states directly
    (`_adamw_states`, several seconds faster on thousands of parameters); otherwise one real step."""
    from torch._subclasses.fake_tensor import FakeTensor

    for opt in (distiller.opt_g, distiller.opt_f, distiller.opt_d):
        if opt is None:
            continue
        params = [p for g in opt.param_groups for p in g["params"]]
        if type(opt) is torch.optim.AdamW and params and all(isinstance(p, FakeTensor) for p in params):
            _adamw_states(opt)
            continue
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)


def _adamw_states(opt: torch.optim.AdamW) -> None:
    """The states torch's AdamW creates in its first step (`Adam._init_group`: `step` a CPU float scalar
    unless capturable or fused, `exp_avg`, `exp_avg_sq`, and `max_exp_avg_sq` with amsgrad, each like the
    parameter), after the step (`step` 1), without the step's arithmetic: values do not matter on fake
    tensors. `tests/test_planner.py::test_fake_adamw_states_are_those_of_a_real_first_step` compares them
    with the states a real step makes."""
    for group in opt.param_groups:
        on_device = group["capturable"] or group["fused"]
        for p in group["params"]:
            state = opt.state[p]
            # torch makes the CPU step with torch.tensor(0.0): a real scalar the mode converts, several times
            # slower than the fake one ones() makes, with the same shape, dtype and device
            state["step"] = (torch.ones((), dtype=torch.float32, device=p.device) if on_device
                             else torch.ones((), dtype=torch.get_default_dtype(), device="cpu"))
            state["exp_avg"] = torch.empty_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.empty_like(p, memory_format=torch.preserve_format)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.empty_like(p, memory_format=torch.preserve_format)


# ----------------------------------------------------------------------------- one iteration, by component
COMPONENTS = ("generator forward", "backward simulation", "generator step", "ISG", "fake-score step",
              "discriminator step")


def iteration_parts(distiller, batch, k: int, backsim: bool, gen_step: bool, iteration: int = 0):
    """The named phases of one iteration of `Distiller.step` (its own `phases`), with the anchor k, the
    backward-simulation coin and the generator step fixed."""
    return distiller.phases(iteration, batch, anchor=k, backsim=backsim, gen_step=gen_step)


def flop_counter():
    """torch's FlopCounterMode, also counting the CPU's fused attention kernel. torch gives formulas for the
    CUDA attention kernels only, so a trace on CPU tensors counted attention as zero FLOPs (a third of SD3.5's
    at 1024 px); the CPU kernel gets the CUDA kernels' formulas (the backward recomputes the scores), so a CPU
    trace counts what the GPU runs."""
    from torch.utils import flop_counter as fc

    def forward(q, k, v, *args, out_shape=None, **kwargs) -> int:  # shapes (FlopCounterMode passes shapes)
        return fc.sdpa_flop_count(q, k, v)

    def backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out, q, k, v)

    aten = torch.ops.aten
    cpu = {"_scaled_dot_product_flash_attention_for_cpu": forward,
           "_scaled_dot_product_flash_attention_for_cpu_backward": backward}
    return fc.FlopCounterMode(display=False, custom_mapping={getattr(aten, op): f for op, f in cpu.items()
                                                             if hasattr(aten, op)})


def _flops_of(parts) -> dict[str, int]:
    flops: dict[str, int] = {}
    for name, fn in parts:
        with flop_counter() as counter:
            fn()
        flops[name] = flops.get(name, 0) + int(counter.get_total_flops())
    return flops


def count_flops(distiller, batch, k: int, backsim: bool, gen_step: bool, iteration: int = 0) -> dict[str, int]:
    """FLOPs of each component of one iteration (real or fake tensors alike), counted by torch's own
    FlopCounterMode: the direct count the trace's (`measure_iteration`) is checked against."""
    return _flops_of(iteration_parts(distiller, batch, k, backsim, gen_step, iteration))


# functions CUDA autocast runs in fp32 whatever their inputs, which CPU autocast leaves in the input's dtype:
# (owner, attribute name)
_FP32_ON_CUDA = [(F, "layer_norm"), (F, "group_norm"), (F, "interpolate"), (F, "softmax"), (F, "log_softmax"),
                 (torch, "softmax"), (torch, "log_softmax"), (torch.Tensor, "softmax"), (torch.Tensor, "log_softmax")]


def _fp32(x):
    return x.float() if isinstance(x, torch.Tensor) and x.dtype in (torch.bfloat16, torch.float16) else x


@contextlib.contextmanager
def _cuda_autocast_policy():
    """The GPU run's autocast on a CPU trace: CUDA autocast runs layer and group norms, upsampling and softmax
    in fp32 (inputs cast, outputs fp32), CPU autocast in bf16. While this is active, and CPU autocast is on,
    these functions get fp32 inputs, so the trace holds the fp32 copies and outputs a GPU run holds (the
    transformers' layer norms, the VAE decoder's group norms). The functions themselves are replaced (not a
    TorchFunctionMode, which the recomputation of a checkpointed block in the backward pass would not see).
    Elsewhere both autocasts agree (matmuls and convolutions in bf16)."""
    saved = [(owner, name, getattr(owner, name)) for owner, name in _FP32_ON_CUDA]

    def wrap(fn):
        def in_fp32(*args, **kwargs):
            if torch.is_autocast_enabled("cpu"):
                args, kwargs = tree_map(_fp32, (args, kwargs))
            return fn(*args, **kwargs)
        return in_fp32

    try:
        for owner, name, fn in saved:
            setattr(owner, name, wrap(fn))
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


@contextlib.contextmanager
def _autocast(cfg: RunConfig, device_type: str = "cpu"):
    """The step's autocast without its weight cache: the cache keeps a low-precision copy of every fp32
    weight used until the step ends, which only the one-process layout has (FSDP gathers the weights in
    the compute dtype already); `layout_bytes` adds it there. On the CPU (a trace of a GPU run) with CUDA
    autocast's fp32 functions (`_cuda_autocast_policy`)."""
    if cfg.train.mixed_precision == "no":
        yield
        return
    dtype = torch.bfloat16 if cfg.train.mixed_precision == "bf16" else torch.float16
    policy = _cuda_autocast_policy() if device_type == "cpu" else contextlib.nullcontext()
    with torch.autocast(device_type, dtype=dtype, cache_enabled=False), policy:
        yield


@dataclass
class Trace:
    """What one fake-tensor trace of an iteration gave."""

    flops: dict[str, float]                  # per iteration on average over the TTUR cycle, by component
    flops_iteration: int                     # one generator iteration at the last anchor with backward simulation
    static_bytes: int                        # parameters + buffers + optimizer states, there before the iteration
    peak_new: dict[str, int]                 # per component: peak of the bytes created during the iteration
    grads: dict[str, int]                    # per component: bytes of the gradients it creates
    # per component: [its peak apart from the optimizer steps, [[bytes at a step's start, the step's own peak
    # above them], ...]]: torch AdamW's temporaries, which other optimizers and layouts do not have
    apart: dict[str, list]

    def __post_init__(self) -> None:  # one form, lists, however made (a trace, or its cached JSON)
        self.apart = {k: [int(outside), [[int(a), int(b)] for a, b in steps]]
                      for k, (outside, steps) in self.apart.items()}

    @property
    def peak_bytes(self) -> int:
        return self.static_bytes + max(self.peak_new.values())

    def component_peaks(self, group: int = 1, eight_bit: bool = False) -> dict[str, int]:
        """Per component, its peak with the optimizer steps' own temporaries as one GPU has them: torch
        AdamW's (traced on every parameter) for the 1/group of the parameters it steps under FSDP, none for
        bitsandbytes' 8-bit AdamW, which updates each parameter in place. (1, False) is `peak_new`."""
        scale = 0.0 if eight_bit else 1.0 / group
        return {k: int(max([outside] + [start + top * scale for start, top in steps]))
                for k, (outside, steps) in self.apart.items()}

    def activations_for(self, group: int = 1, eight_bit: bool = False) -> int:
        """The largest transient of a component less the gradients it keeps (those depend on the layout)."""
        return max(v - self.grads.get(k, 0) for k, v in self.component_peaks(group, eight_bit).items())

    @property
    def activations(self) -> int:
        return self.activations_for()


def _grad_bytes(distiller) -> dict[str, int]:
    def size(params):
        return sum(p.numel() * p.element_size() for p in params if p.requires_grad)

    d = distiller.discriminator
    return {"generator step": size(distiller.generator.parameters()),
            "fake-score step": size(distiller.fake_score.parameters()),
            "discriminator step": size(d.trainable_parameters()) if d is not None else 0}


def trace(cfg: RunConfig, parts: RunParts, *, batch_size: int | None = None, parallel: bool = True,
          cut: bool = True, meanwhile=None) -> dict[bool, Trace]:
    """Build the run under FakeTensorMode and trace one generator iteration at the last anchor with backward
    simulation (the costliest), with gradient checkpointing of G and F on (memory and FLOPs, one pass) and
    off (memory), ISG's FLOPs counted apart in the first (`FlopsWithin`). Returns {checkpointing: Trace}.

    parallel=True (2+ cores, and a system that forks): the networks are built once and the half with
    checkpointing runs in a forked child while this process traces the half without it (`_in_two_processes`);
    the answer comes in about half the time. Otherwise the halves run one after the other on one build.
    `meanwhile`, if given, is called while the child works (with the fake mode off), or after the halves.

    cut=True traces the denoisers with their block stacks cut short and extends the trace to the full depth
    (`senseflow.depth_extension`; the same figures, tested, in a fraction of the time); cut=False traces
    the full depth."""
    import multiprocessing
    import os

    b = batch_size or cfg.train.batch_size
    with _fake_mode():
        distiller, batch, cut_nets = _build_for_trace(cfg, parts, b, cut)
        static, grads, K = _sizes_of(distiller, cut_nets)
        if parallel and (os.cpu_count() or 1) >= 2 and "fork" in multiprocessing.get_all_start_methods():
            on, off = _in_two_processes(cfg, distiller, batch, cut_nets, meanwhile=meanwhile)
            meanwhile = None
        else:
            off = _half(cfg, distiller, batch, False, cut_nets)  # first, as in _in_two_processes
            on = _half(cfg, distiller, batch, True, cut_nets)
    if meanwhile is not None:
        meanwhile()
    mean = mean_iteration_flops(cfg, on["flops"], on["isg"], K)
    return {True: Trace(mean, int(sum(on["flops"].values())), static, on["peaks"], grads, on["apart"]),
            False: Trace({}, 0, static, off["peaks"], grads, off["apart"])}  # FLOPs: with checkpointing only


@contextlib.contextmanager
def _fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    # A fake tensor keeps its mode in its __dict__, which copy.deepcopy copies with it: each deep copy of a
    # module of fake tensors (G and F are copies of the teacher, `Denoiser.student_copy`) would bring a
    # FakeTensorMode of its own, and this one would take the copies' weights for foreign inputs, every op
    # that reads one bypassing its dispatch cache (several times slower). Copies keep this mode.
    mode.__deepcopy__ = lambda memo: mode
    with warnings.catch_warnings(), mode, _ScalarReads():
        # torch's Tensor.__deepcopy__ asks a fake tensor for its data pointer and warns that this is deprecated
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor", category=UserWarning)
        yield


def denoiser_cut(cfg: RunConfig, parts: RunParts):
    """The cut of the run's denoiser the trace builds (`depth_extension.denoiser_cut`), or None."""
    arch_cfg = {**published.ARCHITECTURES[parts.denoiser].config, **parts.overrides}
    return depth_extension.denoiser_cut(cfg.model.family, arch_cfg, bottleneck=cfg.gan.kind == "dmd2")


def _build_for_trace(cfg: RunConfig, parts: RunParts, b: int, cut: bool = False):
    """(distiller, batch, cut_nets): cut_nets, when the denoisers were cut, are (backbone, cut, optimizer) of
    the teacher, G and F, as `depth_extension.DepthRecorder` takes them; else None."""
    the_cut = denoiser_cut(cfg, parts) if cut else None
    if the_cut is not None:
        parts = replace(parts, overrides={**parts.overrides, **the_cut.overrides})
    distiller, text = build_distiller(cfg, parts, fake=True, checkpointing=False)
    batch = make_batch(cfg, distiller, text, b)
    warm_optimizers(distiller)
    if the_cut is None:
        return distiller, batch, None
    if the_cut.bottleneck is not None and hasattr(distiller.discriminator, "_hooked"):
        blocks = depth_extension.joined_blocks(distiller.fake_score.backbone, the_cut)
        tap, after = the_cut.bottleneck  # the full network's bottleneck, not the cut one's middle
        distiller.discriminator._hooked = (blocks[tap], blocks[after] if after is not None else None)
    cut_nets = [(distiller.teacher.backbone, the_cut, None), (distiller.generator.backbone, the_cut, distiller.opt_g),
                (distiller.fake_score.backbone, the_cut, distiller.opt_f)]
    return distiller, batch, cut_nets


def _sizes_of(distiller, cut_nets=None) -> tuple[int, dict[str, int], int]:
    opts = [o for o in (distiller.opt_g, distiller.opt_f, distiller.opt_d) if o is not None]
    static, grads = _static_bytes(distiller, opts), _grad_bytes(distiller)
    if cut_nets is not None:  # the blocks the cut left out
        static += depth_extension.extra_static_bytes(cut_nets)
        grads["generator step"] += depth_extension.extra_grad_bytes(cut_nets, distiller.generator.backbone)
        grads["fake-score step"] += depth_extension.extra_grad_bytes(cut_nets, distiller.fake_score.backbone)
    return static, grads, distiller.few_step.num_steps


def _half(cfg: RunConfig, distiller, batch, checkpointing: bool, cut_nets=None, backsim: bool = True,
          flops: bool = False) -> dict:
    """One half of a trace: with checkpointing, the peaks and FLOPs of one iteration, ISG's share of them
    counted apart (`FlopsWithin`); without, the peaks of one iteration (and its FLOPs with `flops`). The
    half with checkpointing takes longer: it also runs the recomputation.

    backsim=False: the backward simulation runs without G's forwards (`_backsim_without_forwards`), its
    figures left for the other half's: they run under no_grad, where checkpointing changes nothing."""
    K = distiller.few_step.num_steps
    set_checkpointing(distiller, checkpointing)
    apart: dict = {}
    with contextlib.nullcontext() if backsim else _backsim_without_forwards(distiller):
        if not checkpointing:
            peaks, counts = measure_iteration(cfg, distiller, batch, K - 1, True, flops=flops, cut_nets=cut_nets,
                                              apart=apart)
            return {"peaks": peaks, "apart": apart, **({"flops": counts} if flops else {})}
        with FlopsWithin(distiller, "_isg_term") as isg:
            peaks, counts = measure_iteration(cfg, distiller, batch, K - 1, True, flops=True, cut_nets=cut_nets,
                                              within=isg, apart=apart)
    return {"peaks": peaks, "apart": apart, "flops": counts, "isg": isg.flops}


@contextlib.contextmanager
def _backsim_without_forwards(distiller):
    """The backward simulation with each of G's predictions replaced by an empty tensor like its input: the
    noise, re-noising and the sample it hands on are as before (the x0 it re-noises has the input's shape
    and dtype in every family), without the forwards of G. What it costs is then the other half's to give
    (`_in_two_processes`)."""
    few = distiller.few_step
    real = few.backward_simulate

    class Blank:
        def x0(self, x, sigma, cond, guidance=None):
            return torch.empty_like(x)

    few.backward_simulate = lambda student, *args, **kwargs: real(Blank(), *args, **kwargs)
    try:
        yield
    finally:
        del few.backward_simulate


_BAD_FORK = "autograd's threading in combination with fork"  # torch's error in a child forked after a backward


def _in_two_processes(cfg: RunConfig, distiller, batch, cut_nets=None, fallback: bool = True, meanwhile=None
                      ) -> tuple[dict, dict]:
    """The two halves of a trace on one build (made under `_fake_mode`, which is still active): fork, the
    half with checkpointing in the child, the half without it here, then `meanwhile()` (fake mode off)
    while the child finishes. The halves are evened out: the child's runs the backward simulation without
    G's forwards (`_backsim_without_forwards`), and this one counts the FLOPs that stand for them.

    The fork comes before this process runs any backward pass: where torch runs autograd threads for
    devices (a GPU machine), a child forked after one cannot run autograd (the threads do not survive a
    fork). Where this process had run one before (a test suite, a notebook), such a child says so and,
    with `fallback`, the half runs here after the other, as `trace(parallel=False)` does. An exception
    there is raised here; an exception (or Ctrl-C) here stops the child. Returns (half with, half
    without)."""
    from multiprocessing import get_context

    ctx = get_context("fork")
    here, there = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_half_to_pipe, args=(there, cfg, distiller, batch, cut_nets), daemon=True)
    proc.start()
    there.close()
    try:
        off = _half(cfg, distiller, batch, False, cut_nets, backsim=True, flops=True)
        if meanwhile is not None:
            with _real_mode(True):
                meanwhile()
        try:
            kind, value = here.recv()
        except EOFError:
            proc.join()
            raise RuntimeError(f"the planner's second process ended without an answer (exit code {proc.exitcode}); "
                               f"trace(..., parallel=False) runs both halves here") from None
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.join()
        here.close()
    if kind == "error" and fallback and _BAD_FORK in str(value):
        kind, value = "ok", _half(cfg, distiller, batch, True, cut_nets, False)
    if kind == "error":
        raise value
    on, name = value, "backward simulation"
    on["peaks"][name], on["apart"][name] = off["peaks"][name], off["apart"][name]
    on["flops"][name] = off.pop("flops")[name]
    return on, off


def _half_to_pipe(conn, cfg: RunConfig, distiller, batch, cut_nets) -> None:
    """The forked child's work: the half with checkpointing, its backward simulation without G's forwards,
    sent back (or the exception it raised)."""
    try:
        result = ("ok", _half(cfg, distiller, batch, True, cut_nets, False))
    except Exception as e:  # noqa: BLE001 - sent back to the planner, which raises it
        result = ("error", e)
    try:
        conn.send(result)
    except Exception as e:  # noqa: BLE001 - an exception that does not pickle goes back as text
        conn.send(("error", RuntimeError(f"{type(result[1]).__name__}: {result[1]} ({e})")))
    conn.close()


def set_checkpointing(distiller, on: bool) -> None:
    for net in (distiller.generator, distiller.fake_score):
        bb = net.backbone
        if on:
            bb.enable_gradient_checkpointing()
        elif getattr(bb, "is_gradient_checkpointing", False):
            bb.disable_gradient_checkpointing()
    if hasattr(distiller.discriminator, "checkpoint_backbone"):
        distiller.discriminator.checkpoint_backbone = on


def mean_iteration_flops(cfg: RunConfig, flops: dict[str, int], isg: int, K: int) -> dict[str, float]:
    """FLOPs of the average iteration from one generator iteration at anchor K-1 with backward simulation:
    G steps every `ttur` iterations (otherwise G runs forward only, with the same forward FLOPs), backward
    simulation with probability backsim_prob at an anchor drawn uniformly from 0..K-1 (anchor k costs k of
    the K-1 traced steps). `isg`: the part of the generator step's FLOPs that is ISG's."""
    ttur = cfg.optim.ttur
    per_backsim_step = flops["backward simulation"] / (K - 1) if K > 1 else 0.0
    gen = flops.get("generator step", 0)
    return {
        "generator forward": float(flops["generator forward"]),
        "backward simulation": cfg.generator.backsim_prob * (K - 1) / 2 * per_backsim_step,
        "generator step": (gen - isg) / ttur,
        "ISG": isg / ttur,
        "fake-score step": float(flops["fake-score step"]),
        "discriminator step": float(flops["discriminator step"]),
    }


def measure_iteration(cfg: RunConfig, distiller, batch, k: int, backsim: bool, flops: bool = True, cut_nets=None,
                      within: FlopsWithin | None = None, apart: dict | None = None
                      ) -> tuple[dict[str, int], dict[str, int]]:
    """Run one generator iteration at anchor k; per component, the peak of the bytes it creates on top of
    what was there and, when asked, its FLOPs, both from the same pass (LiveBytes with count_flops). torch's
    FlopCounterMode is not used here: it decomposes every operator it has no formula for (group and layer
    norms among them) into smaller ones, whose intermediate tensors a real run never makes (a narrow SD3.5
    generator step traced 13% higher under it), so it would need a pass of its own. Fake or real tensors
    alike. `apart`: a dict given the optimizer steps' share per component (`_trace_parts`)."""
    return _trace_parts(cfg, iteration_parts(distiller, batch, k, backsim, True), distiller.device.type, flops,
                        cut_nets, within, (distiller.opt_g, distiller.opt_f, distiller.opt_d), apart)


def _trace_parts(cfg: RunConfig, parts, device_type: str, flops: bool, cut_nets=None,
                 within: FlopsWithin | None = None, optimizers=(), apart: dict | None = None
                 ) -> tuple[dict[str, int], dict[str, int]]:
    """Run each named part under the run's autocast inside one LiveBytes: its peak and, when asked, its FLOPs.
    With `cut_nets` (cut denoisers), the full depth's peaks and FLOPs from the recorded events. With a dict
    `apart`, the steps of `optimizers` are followed apart: per part, (its peak apart from them, [(level
    at a step's start, the step's own peak above it), ...]) (`LiveBytes.steps_apart`)."""
    peaks: dict[str, int] = {}
    counts: dict[str, int] = {}
    recorder = depth_extension.DepthRecorder(cut_nets) if cut_nets is not None else None
    tracker = LiveBytes(count_flops=flops, recorder=recorder, within=within)
    names = [name for name, _ in parts]
    recording = recorder or contextlib.nullcontext()
    with _scalar_reads_answered_above(), tracker, _autocast(cfg, device_type), recording, \
            _steps_marked(optimizers, tracker):
        for name, fn in parts:
            tracker.reset_peak()
            before = tracker.flops
            fn()
            peaks[name] = tracker.peak
            counts[name] = counts.get(name, 0) + tracker.flops - before
            if apart is not None:
                apart[name] = tracker.steps_apart()
    if recorder is not None:
        deep_peaks, deep_flops, deep_apart = recorder.deep()
        peaks, counts = {}, {}
        for name, p, f, a in zip(names, deep_peaks, deep_flops, deep_apart):
            peaks[name] = p
            counts[name] = counts.get(name, 0) + f
            if apart is not None:
                apart[name] = a
    return peaks, (counts if flops else {})


@contextlib.contextmanager
def _steps_marked(optimizers, tracker: LiveBytes):
    """Each optimizer's `step` runs between the tracker's step_begin and step_end (then `step` is as it was,
    a wrapper of its own, such as an LR scheduler's, included)."""
    marked = []
    for opt in optimizers:
        if opt is None:
            continue

        def step(*args, _real=opt.step, **kwargs):
            tracker.step_begin()
            try:
                return _real(*args, **kwargs)
            finally:
                tracker.step_end()

        marked.append((opt, vars(opt).get("step")))
        opt.step = step
    try:
        yield
    finally:
        for opt, own in marked:
            if own is None:
                del opt.step
            else:
                opt.step = own


def _static_bytes(distiller, opts) -> int:
    seen: set[int] = set()
    total = 0
    d = distiller.discriminator
    d_text = list(d.text_encoder.parameters()) if getattr(d, "text_encoder", None) is not None else []
    for t in list(distiller.parameters()) + list(distiller.buffers()) + d_text:  # D's text tower is not a submodule
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    for opt in opts:
        for st in opt.state.values():
            total += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
    return total


# ----------------------------------------------------------------------------- sizes from counts
@dataclass
class NetworkSize:
    role: str
    arch: str
    params: int
    buffers: int          # non-parameter tensors the module keeps (SD3's position table)
    dtype: torch.dtype
    trainable: bool

    @property
    def bytes(self) -> int:
        return (self.params + self.buffers) * _size(self.dtype)


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _buffer_count(module: nn.Module) -> int:
    return sum(b.numel() for b in module.buffers())


def _largest_unit(module: nn.Module) -> int:
    from senseflow.parallel import denoiser_blocks

    class _Wrap:
        backbone = module

    units = denoiser_blocks(_Wrap())  # the FSDP units of senseflow.parallel
    return max((published.parameter_count(u) for u in units), default=0)


def network_sizes(cfg: RunConfig, parts: RunParts) -> tuple[list[NetworkSize], int]:
    """Every network of the run with its parameter count and dtype, and the largest FSDP unit (params)."""
    model_dtype = DTYPES[cfg.model.dtype]
    train_dtype = DTYPES[cfg.train.trainable_dtype]
    den = published.build(parts.denoiser, **parts.overrides)
    n_den, n_buf = published.parameter_count(den), _buffer_count(den)
    guidance = 0
    if cfg.model.family == "flux":
        from senseflow.models.flux import GUIDANCE_PREFIX

        guidance = sum(p.numel() for n, p in den.named_parameters() if n.startswith(GUIDANCE_PREFIX))
    out = [NetworkSize("teacher", parts.denoiser, n_den, n_buf, model_dtype, False),
           NetworkSize("generator G", parts.denoiser, n_den - guidance, n_buf, train_dtype, True),
           NetworkSize("fake score F", parts.denoiser, n_den - guidance, n_buf, train_dtype, True)]
    unit = _largest_unit(den)
    del den
    vae = published.build(parts.vae)
    out.append(NetworkSize("VAE", parts.vae, published.parameter_count(vae), _buffer_count(vae), model_dtype, False))
    for name in parts.text:
        m = published.build(name)
        out.append(NetworkSize("text encoder", name, published.parameter_count(m), _buffer_count(m), model_dtype, False))
    if cfg.gan.kind != "none":
        heads = _disc_head_params(cfg, parts)
        if parts.backbone:
            m = published.build(parts.backbone)
            out.append(NetworkSize("DINOv2 backbone", parts.backbone, published.parameter_count(m), 0, model_dtype, False))
        if cfg.gan.kind == "vfm" and cfg.gan.text_condition == "clip":
            m = published.build(DISC_TEXT_TOWER)
            out.append(NetworkSize("discriminator text encoder", DISC_TEXT_TOWER, published.parameter_count(m), 0,
                                   model_dtype, False))
        # the heads are fp32 masters whatever train.trainable_dtype is (senseflow.precision.HEAD_DTYPE)
        out.append(NetworkSize("discriminator heads", cfg.gan.kind, heads, 0, HEAD_DTYPE, True))
    return out, unit


DISC_TEXT_TOWER = "clip-l-proj"  # gan.text_condition=clip: CLIP ViT-L/14's text tower with its 768-d projection


def _disc_text_tower(cfg: RunConfig, make):
    """D's own text encoder for gan.text_condition=clip, built by `make` from the published architecture
    (None otherwise); the stand-in tokenizer only has to give 77 ids per prompt, as CLIP's does."""
    if cfg.gan.kind != "vfm" or cfg.gan.text_condition != "clip":
        return None
    from senseflow.models.clip_text import CLIPTextEmbedder
    from senseflow.models.tiny import clip_tokenizer

    return CLIPTextEmbedder(make(DISC_TEXT_TOWER), clip_tokenizer(77))


def _disc_head_params(cfg: RunConfig, parts: RunParts) -> int:
    from senseflow.world import make_discriminator_factory
    from senseflow.models.loading import sigma_table_for
    from senseflow.models.sd3 import SD3Denoiser

    table = sigma_table_for(cfg.model.family)  # a real CPU table, made before the meta device is the default
    with torch.device("meta"):
        arch_cfg = {**published.ARCHITECTURES[parts.denoiser].config, **parts.overrides}
        width, pooled = _text_shapes(cfg.model.family, arch_cfg)
        lat = cfg.model.resolution // 8
        dino = published.build(parts.backbone) if parts.backbone else "unused"
        if cfg.gan.kind == "dmd2":
            from senseflow.models.flux import FluxDenoiser
            from senseflow.models.sdxl import SDXLDenoiser

            den = published.build(parts.denoiser, **parts.overrides)
            wrap = {"sd3": SD3Denoiser, "flux": FluxDenoiser}.get(cfg.model.family)
            fake = wrap(den) if wrap else SDXLDenoiser(den, table)
        else:
            fake = None
        clip = _disc_text_tower(cfg, published.build)
        with _no_power_iterations_on_meta():
            d = make_discriminator_factory(cfg, dino, pooled, cfg.model.resolution, (lat, lat),
                                           text_encoder=clip)(fake)
        return sum(p.numel() for p in d.trainable_parameters())


# ----------------------------------------------------------------------------- the plan
@dataclass
class Layout:
    name: str            # "fsdp (shard group 8)", "ddp", "one process"
    group: int           # ranks sharing one copy of the trainable state
    bytes: dict[str, float]
    checkpointing: bool

    @property
    def total(self) -> float:
        return sum(self.bytes.values())


@dataclass
class Plan:
    cfg: RunConfig
    gpus: int
    nodes: int
    gpu_mem_gib: float
    mfu: float
    networks: list[NetworkSize]
    unit_params: int
    traces: dict[bool, Trace]            # by gradient checkpointing on/off
    layouts: list[Layout]
    fits: bool
    advice: list[str]
    caveats: list[str]
    smallest_cluster: int | None

    @property
    def flops(self) -> dict[str, float]:
        return self.traces[self.cfg.train.gradient_checkpointing].flops

    def seconds_per_iteration(self, card: str) -> float:
        return sum(self.flops.values()) / (PEAK_BF16[card] * self.mfu)

    @property
    def chosen(self) -> Layout:
        return self.layouts[0]

    def to_dict(self) -> dict:
        return {
            "preset": self.cfg.preset, "gpus": self.gpus, "nodes": self.nodes, "gpu_mem_gib": self.gpu_mem_gib,
            "networks": [{"role": n.role, "arch": n.arch, "params": n.params, "buffers": n.buffers,
                          "dtype": str(n.dtype).removeprefix("torch."), "trainable": n.trainable} for n in self.networks],
            "layouts": [{"name": lay.name, "group": lay.group, "checkpointing": lay.checkpointing,
                         "bytes": lay.bytes, "total_gib": lay.total / GIB} for lay in self.layouts],
            "flops": self.flops, "mfu": self.mfu,
            "seconds_per_iteration": {c: self.seconds_per_iteration(c) for c in PEAK_BF16},
            "traces": {("checkpointing" if ck else "no checkpointing"): {
                "static_bytes": t.static_bytes, "peak_new": t.peak_new, "grads": t.grads,
                "activations": t.activations, "flops_iteration": t.flops_iteration,
                "peak_new_8bit": t.component_peaks(1, True), "apart": t.apart} for ck, t in self.traces.items()},
            "fits": self.fits, "advice": self.advice, "smallest_cluster": self.smallest_cluster,
            "config": self.cfg.to_dict(),  # the resolved run config the plan is for
        }


def activation_bytes(t: Trace, group: int = 1, eight_bit: bool = False) -> int:
    return int(t.activations_for(group, eight_bit))


def layout_bytes(cfg: RunConfig, nets: list[NetworkSize], unit_params: int, trace_: Trace, group: int, *,
                 eight_bit: bool, offload_text: bool, one_process: bool = False) -> dict[str, float]:
    train_size = _size(DTYPES[cfg.train.trainable_dtype])
    compute = _size(torch.bfloat16) if cfg.train.mixed_precision != "no" else train_size
    frozen = sum(n.bytes for n in nets if not n.trainable and not (offload_text and n.role == "text encoder"))
    trainable = [n for n in nets if n.trainable]
    weights = sum(n.bytes for n in trainable)
    grads = max(n.params for n in trainable) * train_size
    per_param = EIGHT_BIT_BYTES if eight_bit else 2 * train_size
    optim = sum(n.params for n in trainable) * per_param
    out = {"frozen networks (replicated)": float(frozen),
           "trainable weights": weights / group, "gradients": grads / group, "optimizer states": optim / group}
    if group > 1:
        out["FSDP gathered units"] = float(2 * unit_params * compute)
    elif one_process and compute < train_size:
        out["autocast weight cache"] = float(sum(n.params for n in trainable) * compute)
    out["activations"] = float(activation_bytes(trace_, group, eight_bit))
    return out


def _trace_key(cfg: RunConfig, parts: RunParts) -> str:
    """What a trace depends on: the config sections that shape the iteration and the package's source."""
    import hashlib
    import json
    from pathlib import Path

    d = cfg.to_dict()
    keep = {k: d[k] for k in ("method", "model", "generator", "dmd", "fake_score", "ida", "isg", "gan")}
    keep["train"] = {k: d["train"][k] for k in ("batch_size", "mixed_precision", "trainable_dtype")}
    # the optimizer (its states are in the trace; optim.ttur weighs the mean FLOPs), but not eight_bit: the
    # trace runs torch AdamW either way and 8-bit states are counted from the parameter counts
    keep["optim"] = {k: v for k, v in d["optim"].items() if k != "eight_bit"}
    keep["parts"] = [parts.denoiser, parts.vae, list(parts.text), parts.backbone, sorted(parts.overrides.items()),
                     parts.text_tokens]
    h = hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode())
    root = Path(__file__).resolve().parent
    for f in sorted(root.rglob("*.py")):
        h.update(f.read_bytes())
    h.update(torch.__version__.encode())
    return h.hexdigest()[:16]


def _cache_path(cfg: RunConfig, parts: RunParts, what: str, cache_dir=None):
    import os
    from pathlib import Path

    root = Path(cache_dir or os.environ.get("SENSEFLOW_CACHE") or "~/.cache/senseflow").expanduser() / "plan"
    return root / f"{_trace_key(cfg, parts)}{what}.json"


def _cached(path, compute, encode, decode):
    """decode(JSON of path) if it reads, else compute(), written there as encode(result) first."""
    import json
    import os

    if path.is_file():
        try:
            return decode(json.loads(path.read_text()))
        except (ValueError, TypeError, KeyError, AttributeError):
            pass  # a damaged or older cache file is computed again
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(encode(value)))
    tmp.replace(path)
    return value


def cached_trace(cfg: RunConfig, parts: RunParts, cache_dir=None, meanwhile=None) -> dict[bool, Trace]:
    """`trace`, kept as JSON under <cache>/plan/ keyed by everything it depends on (`_trace_key`): a trace of
    a full-size model takes a minute or more on a small CPU, a cached one is read at once. `meanwhile` is
    called while a trace is made (`trace`), not when one is read."""
    from dataclasses import asdict

    return _cached(_cache_path(cfg, parts, "", cache_dir), lambda: trace(cfg, parts, meanwhile=meanwhile),
                   lambda traces: {str(k): asdict(v) for k, v in traces.items()},
                   lambda raw: {k == "True": Trace(**v) for k, v in raw.items()})


def cached_network_sizes(cfg: RunConfig, parts: RunParts, cache_dir=None) -> tuple[list[NetworkSize], int]:
    """`network_sizes`, cached beside the trace (building the networks on the meta device again, the VFM heads'
    spectral norms included, takes seconds)."""
    def encode(value):
        nets, unit = value
        return {"unit": unit, "networks": [{**n.__dict__, "dtype": str(n.dtype).removeprefix("torch.")} for n in nets]}

    def decode(raw):
        return ([NetworkSize(**{**n, "dtype": DTYPES[n["dtype"]]}) for n in raw["networks"]], int(raw["unit"]))

    return _cached(_cache_path(cfg, parts, ".networks", cache_dir), lambda: network_sizes(cfg, parts), encode, decode)


def plan(cfg: RunConfig, *, gpus: int = 8, gpu_mem_gib: float = 80.0, nodes: int = 1, mfu: float = DEFAULT_MFU,
         traces: dict[bool, Trace] | None = None) -> Plan:
    """The plan of `cfg` on `gpus` GPUs of `gpu_mem_gib` each over `nodes` nodes (see the module doc)."""
    if gpus < 1 or nodes < 1 or gpus % nodes:
        raise PlanError(f"--gpus {gpus} over --nodes {nodes}: the GPUs must split evenly over the nodes")
    if not gpu_mem_gib > 0:
        raise PlanError(f"--gpu-mem {gpu_mem_gib}: give the memory of one GPU in GiB, e.g. 80")
    group = cfg.train.shard_group or gpus
    if gpus > 1 and gpus % group:
        raise PlanError(f"train.shard_group={cfg.train.shard_group} does not divide --gpus {gpus}; use a divisor of "
                        f"{gpus} (e.g. the GPUs per node, {gpus // nodes}) or 0 for all")
    parts = run_parts(cfg)
    sizes = []  # the network sizes are counted while the trace's second process works, if there is a trace
    traces = traces or cached_trace(cfg, parts, meanwhile=lambda: sizes.append(cached_network_sizes(cfg, parts)))
    nets, unit = sizes[0] if sizes else cached_network_sizes(cfg, parts)
    ck = cfg.train.gradient_checkpointing
    eight = cfg.optim.eight_bit
    budget = (gpu_mem_gib - HEADROOM_GIB) * GIB

    def make(name, g, ckpt=ck, eight_bit=eight, offload=False):
        return Layout(name, g, layout_bytes(cfg, nets, unit, traces[ckpt], g, eight_bit=eight_bit,
                                            offload_text=offload, one_process=gpus == 1), ckpt)

    if gpus == 1:
        layouts = [make("one process", 1)]
    else:
        chosen = make(f"{cfg.train.parallel} (shard group {group})" if cfg.train.parallel == "fsdp" else "ddp",
                      group if cfg.train.parallel == "fsdp" else 1)
        other = make("ddp", 1) if cfg.train.parallel == "fsdp" else make(f"fsdp (shard group {gpus})", gpus)
        layouts = [chosen, other]
    fits = layouts[0].total <= budget
    advice: list[str] = []
    if not fits:
        g_all = gpus if gpus > 1 else 1
        tries = [("train.parallel=fsdp train.shard_group=0 (shard over all GPUs)", dict(g=g_all)),
                 ("train.gradient_checkpointing=true", dict(g=g_all, ckpt=True)),
                 ("optim.eight_bit=true", dict(g=g_all, ckpt=True, eight_bit=True)),
                 ("text encoders offloaded after caching the prompt embeddings",
                  dict(g=g_all, ckpt=True, eight_bit=True, offload=True))]
        for what, kw in tries:
            lay = make(what, kw.pop("g"), **kw)
            if lay.total <= budget:
                advice.append(f"fits with {what}: {lay.total / GIB:.1f} GiB per GPU")
                break
        else:
            if cfg.train.batch_size > 1:
                advice.append(f"try a smaller per-GPU batch (train.batch_size={cfg.train.batch_size}); activations "
                              f"are {layouts[0].bytes['activations'] / GIB:.1f} GiB of it")
            advice.append("more GPUs per shard group (larger nodes) or larger GPUs")
    smallest = smallest_cluster(cfg, nets, unit, traces[True], gpu_mem_gib)
    caveats = precision_caveats(cfg)
    return Plan(cfg, gpus, nodes, gpu_mem_gib, mfu, nets, unit, traces, layouts, fits, advice, caveats, smallest)


def smallest_cluster(cfg: RunConfig, nets, unit: int, trace_: Trace, gpu_mem_gib: float) -> int | None:
    """Fewest GPUs (1, 2, 4, 8, then whole 8-GPU nodes) on which the preset's precision fits under FSDP with
    gradient checkpointing."""
    budget = (gpu_mem_gib - HEADROOM_GIB) * GIB
    for n in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        total = sum(layout_bytes(cfg, nets, unit, trace_, n, eight_bit=cfg.optim.eight_bit, offload_text=False,
                                 one_process=n == 1).values())
        if total <= budget:
            return n
    return None


def precision_caveats(cfg: RunConfig) -> list[str]:
    out = [f"teacher and frozen backbones in {cfg.model.dtype}; G, F and D heads keep {cfg.train.trainable_dtype} "
           f"master weights; compute under {cfg.train.mixed_precision} autocast"]
    if cfg.optim.eight_bit:
        out.append("8-bit AdamW states (bitsandbytes; must be installed, no silent fallback)")
    else:
        out.append(f"AdamW states in the trainable dtype ({cfg.train.trainable_dtype})")
    out.append("activations traced on CPU fake tensors under CPU autocast: CUDA kernels (flash attention) keep "
               "the same O(L) attention memory, but allocator fragmentation is not modelled (headroom "
               f"{HEADROOM_GIB:g} GiB per GPU)")
    return out


# ----------------------------------------------------------------------------- text
def _fmt_bytes(b: float) -> str:
    return f"{b / GIB:8.2f} GiB"


def _fmt_count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def render(p: Plan) -> list[str]:
    cfg = p.cfg
    lines = [f"plan {cfg.preset or cfg.name}: {cfg.model.teacher} at {cfg.model.resolution}px, per-GPU batch "
             f"{cfg.train.batch_size}, {p.gpus} GPU(s) x {p.gpu_mem_gib:g} GiB over {p.nodes} node(s)", "",
             "networks (parameters, counted from the published configs):"]
    for n in p.networks:
        extra = f" + {_fmt_count(n.buffers)} buffer values" if n.buffers else ""
        lines.append(f"  {n.role:22s} {n.arch:14s} {n.params:>15,d} ({_fmt_count(n.params)}){extra}  "
                     f"{str(n.dtype).removeprefix('torch.')}{'  trained' if n.trainable else ''}")
    for ck in (True, False):
        lines.append(f"activations at batch {cfg.train.batch_size}, gradient checkpointing {'on ' if ck else 'off'}: "
                     f"{activation_bytes(p.traces[ck], eight_bit=cfg.optim.eight_bit) / GIB:.2f} GiB (traced peak)")
    lines.append("")
    for lay in p.layouts:
        lines.append(f"memory per GPU, {lay.name}, checkpointing {'on' if lay.checkpointing else 'off'}:")
        for k, v in lay.bytes.items():
            lines.append(f"  {k:30s} {_fmt_bytes(v)}")
        lines.append(f"  {'total':30s} {_fmt_bytes(lay.total)}  (budget {p.gpu_mem_gib - HEADROOM_GIB:g} GiB)")
    lines.append("")
    total = sum(p.flops.values())
    lines.append(f"FLOPs per GPU per iteration (mean over the TTUR cycle of {cfg.optim.ttur}): {total / 1e12:.1f} TFLOP")
    for k, v in p.flops.items():
        lines.append(f"  {k:22s} {v / 1e12:9.2f} TFLOP")
    for card in PEAK_BF16:
        lines.append(f"  time per iteration on {card} at {p.mfu:.0%} MFU: {p.seconds_per_iteration(card):.2f} s "
                     f"({cfg.train.iterations} iterations: {p.seconds_per_iteration(card) * cfg.train.iterations / 3600:.1f} h)")
    lines.append("")
    if p.fits:
        lines.append(f"verdict: fits ({p.chosen.total / GIB:.1f} GiB of {p.gpu_mem_gib:g} GiB per GPU)")
    else:
        lines.append(f"verdict: does not fit ({p.chosen.total / GIB:.1f} GiB of {p.gpu_mem_gib:g} GiB per GPU)")
        lines += [f"  {a}" for a in p.advice]
    sc = p.smallest_cluster
    lines.append(f"smallest cluster of {p.gpu_mem_gib:g} GiB GPUs (FSDP, checkpointing): "
                 f"{sc if sc else 'none up to 256'} GPU(s)")
    lines += ["caveats:"] + [f"  {c}" for c in p.caveats]
    return lines

