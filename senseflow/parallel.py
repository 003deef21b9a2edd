"""Multi-process training: how G, F and D are spread over the processes, and what the processes share.

One process (the default, and everything on this CPU machine unless launched with torchrun /
`accelerate launch` / a multi-task SLURM profile) needs none of this: `Parallel.single()` turns every
call below into a no-op.

With several processes (torch.distributed already initialised by accelerate from the launcher's env),
`train.parallel` picks the layout, always through PyTorch's FSDP2 (`torch.distributed.fsdp.fully_shard`):

* `fsdp` (default): parameters, gradients and optimizer state of the generator G, the fake score F and
  the discriminator's trainable heads are sharded over the ranks (ZeRO-3); each transformer block (UNet:
  each down/mid/up block) is its own unit, gathered just before its forward/backward and freed after.
  `train.shard_group = k` (a divisor of the world size) shards within groups of k ranks and replicates
  across groups (HSDP), e.g. k = GPUs per node.
* `ddp`: parameters replicated on every rank, gradients averaged (FSDP2 on a (world, 1) mesh: the
  replicate dimension all-reduces, the shard dimension has one rank).

Why FSDP2 rather than torch's DistributedDataParallel wrapper: one SenseFlow iteration runs G forward
more than once before a single backward (the generator sample, ISG's frozen-G step), freezes D's
parameters during G's step and reads F's bottleneck through hooks (DMD2's head). DDP's reducer expects one
forward per backward and a fixed set of parameters with gradients; FSDP2's per-module hooks handle all
three and give the same averaged gradients.

Precision is senseflow.precision's, the same as in one process: G and F in train.trainable_dtype, D's
heads in fp32, the frozen parts in model.dtype; a bf16 policy on GPUs only sets the compute dtype.

What stays replicated: the frozen teacher (a full copy per rank, in the run's dtype; evaluation samples
the teacher on every rank) and the discriminator's frozen DINOv2 backbone (no gradients to synchronise;
ViT-L is 0.3B parameters).

IDA works on shards: G and F are sharded by the same rule, so each rank lerps its local shard of F
against the matching local shard of G (`senseflow.losses.ida_update`).

Every rank draws the iteration's anchor index and backward-simulation coin from a shared stream and its
own noise and data from a per-rank stream (senseflow.distill), computes the same averaged losses
(`mean_metrics`, so the divergence check agrees everywhere), and writes nothing: rank 0 writes the
run folder. Checkpoints hold full (unsharded) tensors, so a run can resume on a different number of
processes and `senseflow export` / `sample` read them in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

STRATEGIES = ("fsdp", "ddp")


@dataclass
class Parallel:
    """The process layout of a run: world size, this process's rank, the FSDP2 mesh (None in one process)."""

    world_size: int = 1
    rank: int = 0
    strategy: str = "none"
    mesh: Any = None
    mp_policy: Any = None

    @classmethod
    def single(cls) -> "Parallel":
        return cls()

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Every rank's scalars averaged over the ranks (same keys on every rank; non-finite stays
        non-finite, so divergence is seen everywhere)."""
        if not self.distributed or not metrics:
            return metrics
        keys = sorted(metrics)
        t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        t = t.to(_collective_device())
        torch.distributed.all_reduce(t)
        t = (t / self.world_size).cpu()
        return {k: float(v) for k, v in zip(keys, t)}


def launch_rank() -> int:
    """This process's rank as the launcher set it (RANK: torchrun, accelerate launch, senseflow.launch), before
    any process group exists; 0 in a single process."""
    return int(os.environ.get("RANK", "0") or 0)


def _collective_device() -> torch.device:
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def setup(strategy: str, shard_group: int, device: torch.device, mixed_precision: str = "no") -> Parallel:
    """The layout for the current process group (one process: `Parallel.single()`)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return Parallel.single()
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from senseflow.errors import UserError

    world, rank = dist.get_world_size(), dist.get_rank()
    if strategy not in STRATEGIES:
        raise UserError(f"train.parallel={strategy!r} is not a strategy; choose one of {list(STRATEGIES)}")
    kind = device.type
    if strategy == "ddp":
        mesh = init_device_mesh(kind, (world, 1), mesh_dim_names=("replicate", "shard"))
    else:
        group = shard_group or world
        if world % group:
            raise UserError(f"train.shard_group={shard_group} does not divide the {world} processes; use a divisor "
                            f"of {world} (e.g. the GPUs per node) or 0 for all ranks")
        mesh = (init_device_mesh(kind, (world,), mesh_dim_names=("shard",)) if group == world else
                init_device_mesh(kind, (world // group, group), mesh_dim_names=("replicate", "shard")))
    mp = None
    if kind == "cuda" and mixed_precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    return Parallel(world_size=world, rank=rank, strategy=strategy, mesh=mesh, mp_policy=mp)


# ----------------------------------------------------------------------------- sharding
def denoiser_blocks(denoiser: nn.Module) -> list[nn.Module]:
    """The units FSDP gathers one at a time: SD3 / FLUX transformer blocks, or an SDXL UNet's blocks."""
    bb = denoiser.backbone
    blocks: list[nn.Module] = []
    for name in ("transformer_blocks", "single_transformer_blocks"):
        blocks += list(getattr(bb, name, None) or [])
    if getattr(bb, "mid_block", None) is not None:
        blocks += list(bb.down_blocks) + [bb.mid_block] + list(bb.up_blocks)
    return blocks


def shard_module(module: nn.Module, units: list[nn.Module], ctx: Parallel, methods: tuple[str, ...] = (),
                 keep: nn.Module | None = None) -> None:
    """fully_shard each unit, then `module` itself (its remaining parameters, except those of `keep`, which
    stay plain and replicated); `methods` are entry points other than forward that run the module (their
    calls gather its parameters as forward does)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    kw = {"mesh": ctx.mesh}
    if ctx.mp_policy is not None:
        kw["mp_policy"] = ctx.mp_policy
    for unit in units:
        fully_shard(unit, **kw)
    fully_shard(module, **kw, **({"ignored_params": set(keep.parameters())} if keep is not None else {}))
    for name in methods:
        if hasattr(module, name):
            register_fsdp_forward_method(module, name)


def shard_distiller(distiller, ctx: Parallel) -> None:
    """Shard G, F and D in place (before their optimizers are built; FSDP2 moves the shards to the mesh's
    device). G and F get the same units, so their local shards match parameter for parameter (IDA). The
    shards keep the dtypes senseflow.precision gave the modules (the same as in one process); with a
    bf16/fp16 policy on GPUs, FSDP2 gathers them in the compute dtype."""
    if not ctx.distributed:
        return
    for model in (distiller.generator, distiller.fake_score):
        shard_module(model, denoiser_blocks(model), ctx)  # x0 / velocity go through forward
    disc = distiller.discriminator
    from senseflow.discriminators import DMD2Discriminator, VFMDiscriminator

    if disc is None:
        pass
    elif isinstance(disc, VFMDiscriminator):
        # heads sharded; the frozen DINOv2 backbone stays a plain replica (no gradients to sync, and the
        # module object may be shared with other code in this process, e.g. a world's cached backbone)
        shard_module(disc, [*disc.heads, *(disc.refmappers or [])], ctx, methods=("real_fake_logits",),
                     keep=disc.backbone)
    elif isinstance(disc, DMD2Discriminator):
        # the head is D's only parameter set; F's body is already sharded. F's forward cannot be cut short
        # under FSDP (an exception mid-forward would leave gathered blocks behind), so it runs to the end.
        disc.early_exit = False
        shard_module(disc.head, [], ctx)
    else:
        shard_module(disc, [], ctx)
    check_sharded(distiller)


def check_sharded(distiller) -> None:
    """Every trainable parameter of G, F and D is an FSDP-managed DTensor (none would silently train
    unsynchronised on one rank)."""
    from torch.distributed.tensor import DTensor

    loose = []
    for name in ("generator", "fake_score", "discriminator"):
        module = getattr(distiller, name)
        if module is None:
            continue
        loose += [f"{name}.{n}" for n, p in module.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if loose:
        raise RuntimeError(f"parameters left out of FSDP sharding (would not be synchronised): {loose[:5]}")


# ----------------------------------------------------------------------------- state
def full_state(module: nn.Module, ctx: Parallel) -> dict[str, torch.Tensor]:
    """The module's full (unsharded) state dict on CPU; in several processes a collective, whose result
    only rank 0 holds (the others get {})."""
    if not ctx.distributed:
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(module: nn.Module, state: dict[str, torch.Tensor], ctx: Parallel, strict: bool = True):
    """Load a full state dict (as saved by `full_state`) into a sharded or plain module."""
    if not ctx.distributed:
        return module.load_state_dict(state, strict=strict)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    return set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=strict))


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, ctx: Parallel) -> dict:
    """The optimizer's state keyed by parameter name (the same layout in one process and in several, so a
    checkpoint resumes on any number of processes); in several processes only rank 0 gets it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if not ctx.distributed and not optimizer.state:
        return optimizer.state_dict()  # nothing stepped yet (torch's helper would initialise the state)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True) if ctx.distributed else StateDictOptions()
    return get_optimizer_state_dict(module, optimizer, options=options)


def load_full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict, ctx: Parallel) -> None:
    if not ctx.distributed and all(isinstance(k, int) for k in state.get("state", {})):
        optimizer.load_state_dict(state)  # a checkpoint from before name-keyed optimizer state
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=ctx.distributed))
