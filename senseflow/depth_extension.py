"""The planner's trace of a denoiser with its block stacks cut short, extended exactly to the full depth.

A full-size iteration is hundreds of thousands of operator dispatches through fake tensors, most of them
in the denoisers' stacks of identical blocks (SD3.5-Large: 38 transformer blocks; FLUX.1-dev 19 + 38;
SDXL's ten-layer transformer stacks). The planner traces a denoiser that keeps, of every run of identical
blocks, its first block, a *representative* (the second) and its last block (plus any block the run
must keep, such as DMD2's bottleneck), and this module rebuilds the full depth from that trace:

- **Segments.** Forward pre-hooks cut each pass through a kept block into a segment, from the block's
  start to the start of the next kept block (or the end of the network's forward), so the hand-over
  between two blocks belongs to the first. Its backward is the set of autograd nodes created in that forward segment (their sequence
  numbers, read from the node the engine is running; the recomputation of a checkpointed block runs
  inside its own nodes). Gradient accumulation into a block's parameter belongs to the block whose node
  ran last.
- **Copies.** The full network is the cut one with `k` copies of each representative inserted after it
  (k = blocks of the run the cut left out between it and the next kept block). A copy does in its forward
  segment what the representative does in its own (the same ops on the same shapes: it frees its input,
  the output of a block of the same kind, as the representative frees its own), and in its backward what
  the representative's backward does; the copies' forward segments run right after the
  representative's, their backward segments right before its backward. So the live bytes of the full
  iteration are the cut trace's, with each representative's segment repeated k more times in place, and
  with every storage a representative made that dies *outside* its own pass through the network (its
  parameters' gradients, freed by `zero_grad`) dying k + 1 times over. Storages the optimizer makes per
  parameter (the `_foreach_` ops' outputs for the representative's parameters, gradients and states) are
  made and freed k + 1 times over. FLOPs of a representative's segments count k + 1 times.
- **Checked.** `tests/test_planner.py::test_the_cut_trace_extended_equals_the_full_trace` traces SD3.5-Medium
  (DMD2), FLUX.1-dev (SenseFlow and DMD2) and SDXL (slow) denoisers of a few more blocks than their cut keeps
  at full depth and from their cut: every component's peak and FLOPs, static bytes and gradients are equal.
  The segments assume what these architectures do: a block's input is the output of the block before it
  (of the same kind) and nothing else of a block outlives the pass through the network but its
  parameters' gradients.

The parameters, buffers and optimizer states of the copies (`extra_static_bytes`) and their gradients are
added from the representative's.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from senseflow.discriminators import bottleneck_index  # the DMD2 discriminator's tap, kept by the cut

_NO_SEQUENCE = 2 ** 64 - 1  # the sequence number of AccumulateGrad nodes


# ----------------------------------------------------------------------------- which blocks to keep
def keep_blocks(kinds: Sequence, pinned: Sequence[int] = ()) -> tuple[list[int], dict[int, int]]:
    """Of a stack whose block i is of kind kinds[i], the blocks to keep and, per kept position that is a
    representative, its number of copies. In every run of one kind, its first and last blocks and the
    pinned ones are kept; between two kept blocks i < j of a run, block i + 1 is kept too, and stands for
    the j - i - 2 blocks after it."""
    kept: set[int] = set()
    stands_for: dict[int, int] = {}
    start = 0
    for end in range(1, len(kinds) + 1):
        if end < len(kinds) and kinds[end] == kinds[start]:
            continue
        anchors = sorted({start, end - 1} | {p for p in pinned if start <= p < end})
        kept.update(anchors)
        for i, j in zip(anchors, anchors[1:]):
            if j - i >= 2:
                kept.add(i + 1)
                if j - i >= 3:
                    stands_for[i + 1] = j - i - 2
        start = end
    order = sorted(kept)
    return order, {order.index(i): k for i, k in stands_for.items()}


@dataclass(frozen=True)
class CutStack:
    """One cut ModuleList: its attribute path in the backbone, the full stack's block indices it keeps, and
    the number of copies each representative (by position in the cut list) stands for."""

    path: str
    kept: tuple[int, ...]
    copies: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Cut:
    """A denoiser's cut: the config overrides that build it, its stacks, and (DMD2) the positions, in the
    cut stacks taken as one sequence, of the full network's bottleneck block and the block after it."""

    overrides: dict
    stacks: tuple[CutStack, ...]
    bottleneck: tuple[int, int | None] | None = None

    @property
    def removed(self) -> int:
        return sum(sum(s.copies.values()) for s in self.stacks)


def denoiser_cut(family: str, config: dict, bottleneck: bool) -> Cut | None:
    """The cut of a published denoiser config (None when no run is long enough to cut). bottleneck=True
    keeps DMD2's bottleneck block and the block after it (SD3/FLUX: their index in the full network)."""
    if family == "sd3":
        n = int(config["num_layers"])
        dual = set(config.get("dual_attention_layers") or ())
        kinds = ["last" if i == n - 1 else "dual" if i in dual else "plain" for i in range(n)]
        pins = [i for i in bottleneck_index(n) if i is not None] if bottleneck else []
        kept, copies = keep_blocks(kinds, pins)
        if not copies:
            return None
        overrides = dict(num_layers=len(kept), dual_attention_layers=tuple(p for p, i in enumerate(kept) if i in dual))
        return Cut(overrides, (CutStack("transformer_blocks", tuple(kept), copies),), _tap(kept, pins))
    if family == "flux":
        n1, n2 = int(config["num_layers"]), int(config["num_single_layers"])
        pins = [i for i in bottleneck_index(n1 + n2) if i is not None] if bottleneck else []
        kept1, copies1 = keep_blocks(["double"] * n1, [p for p in pins if p < n1])
        kept2, copies2 = keep_blocks(["single"] * n2, [p - n1 for p in pins if p >= n1])
        if not copies1 and not copies2:
            return None
        stacks = (CutStack("transformer_blocks", tuple(kept1), copies1),
                  CutStack("single_transformer_blocks", tuple(kept2), copies2))
        return Cut(dict(num_layers=len(kept1), num_single_layers=len(kept2)), stacks,
                   _tap(kept1 + [n1 + i for i in kept2], pins))
    if family == "sdxl":  # the bottleneck is the mid block: nothing to pin
        return _unet_cut(config)
    return None


def _tap(kept: list[int], pins: list[int]) -> tuple[int, int | None] | None:
    """The positions in the cut of the pinned bottleneck block and of the block after it (if pinned)."""
    if not pins:
        return None
    return kept.index(pins[0]), (kept.index(pins[1]) if len(pins) > 1 else None)


def _unet_cut(config: dict) -> Cut | None:
    kinds = list(config["down_block_types"])
    n = len(kinds)
    layers = config["transformer_layers_per_block"]
    layers = [layers] * n if isinstance(layers, int) else list(layers)
    if config.get("reverse_transformer_layers_per_block") is not None:
        return None  # not a published SDXL layout: trace at full depth
    cut_layers, stacks = [], []
    for i, depth in enumerate(layers):
        kept, copies = keep_blocks(["layer"] * depth)
        cut_layers.append(len(kept))
        if not copies:
            continue
        per = int(config["layers_per_block"])
        paths = []
        if "CrossAttn" in kinds[i]:
            paths += [f"down_blocks.{i}.attentions.{j}.transformer_blocks" for j in range(per)]
            paths += [f"up_blocks.{n - 1 - i}.attentions.{j}.transformer_blocks" for j in range(per + 1)]
        if i == n - 1:
            paths.append("mid_block.attentions.0.transformer_blocks")
        stacks += [CutStack(p, tuple(kept), copies) for p in paths]
    if not stacks:
        return None
    return Cut(dict(transformer_layers_per_block=tuple(cut_layers)), tuple(stacks))


def stack_modules(backbone: nn.Module, cut: Cut) -> list[nn.ModuleList]:
    """The cut stacks of a built backbone, checked against the cut's lengths."""
    out = []
    for stack in cut.stacks:
        blocks = backbone.get_submodule(stack.path)
        if not isinstance(blocks, nn.ModuleList) or len(blocks) != len(stack.kept):
            raise RuntimeError(f"{type(backbone).__name__}.{stack.path} is not the cut stack of "
                               f"{len(stack.kept)} blocks the planner built")
        out.append(blocks)
    return out


def joined_blocks(backbone: nn.Module, cut: Cut) -> list[nn.Module]:
    return [b for blocks in stack_modules(backbone, cut) for b in blocks]


# ----------------------------------------------------------------------------- recording one pass
@dataclass
class _Family:
    k: int                       # copies
    backward: bool
    deltas: list = field(default_factory=list)
    first: int = -1
    last: int = -1


class DepthRecorder:
    """Follows, for `LiveBytes`, which block segment every storage event and FLOP of an iteration happens in,
    and gives the full-depth peaks and FLOPs of each component (`deep`). Use as a context manager around
    the traced pass: the hooks exist only inside it.

    networks: (backbone, cut, optimizer or None) per denoiser instance (teacher, G, F)."""

    def __init__(self, networks: Sequence[tuple[nn.Module, Cut, torch.optim.Optimizer | None]]):
        self._networks = list(networks)
        self._handles: list = []
        self._open: tuple | None = None            # (net, stack, pos, traversal) of the forward segment open
        self._open_seq = 0
        self._traversal = [0] * len(self._networks)
        self._seq_lo: list[int] = []               # backward: sequence ranges of forward segments, in order
        self._seq_hi: list[int] = []
        self._seq_tag: list[tuple] = []
        self._last_backward: tuple | None = None
        self._param_block: dict[int, tuple] = {}   # id(parameter) -> (net, stack, pos)
        self._owner: dict[int, tuple] = {}         # storage -> (net, stack, pos) of a representative (per-parameter)
        self._born: dict[int, tuple] = {}          # storage -> (family or None, owner or None, tag)
        self.families: dict[tuple, _Family] = {}
        self.deltas: list[int] = []
        self.boundaries: list[int] = []
        self.flops: list[int] = []
        self.steps: list[list[int]] = []           # [first event, end] of each optimizer step (`step_begin`)
        self.recording = False

    # -- hooks
    def __enter__(self) -> "DepthRecorder":
        for n, (backbone, cut, opt) in enumerate(self._networks):
            self._handles.append(backbone.register_forward_pre_hook(self._network_start(n)))
            self._handles.append(backbone.register_forward_hook(self._network_end, always_call=True))
            for s, (stack, blocks) in enumerate(zip(cut.stacks, stack_modules(backbone, cut))):
                for pos, block in enumerate(blocks):
                    self._handles.append(block.register_forward_pre_hook(self._block_start(n, s, pos)))
                    for p in block.parameters():
                        self._param_block[id(p)] = (n, s, pos)
                    if pos in stack.copies:
                        self._own_per_parameter(block, opt, (n, s, pos))
        self.recording = True
        return self

    def __exit__(self, *exc) -> None:
        self.recording = False
        self._close()
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _own_per_parameter(self, block: nn.Module, opt, owner: tuple) -> None:
        for p in block.parameters():
            self._owner[p.untyped_storage()._cdata] = owner
            state = opt.state.get(p, {}) if opt is not None else {}
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    self._owner[v.untyped_storage()._cdata] = owner

    @staticmethod
    def _in_backward() -> bool:
        return torch._C._current_autograd_node() is not None

    def _network_start(self, n: int):
        def hook(_module, _args):
            if not self._in_backward():
                self._close()
                self._traversal[n] += 1
        return hook

    def _network_end(self, _module, _args, _output) -> None:
        if not self._in_backward():
            self._close()

    def _block_start(self, n: int, s: int, pos: int):
        def hook(_module, _args):
            if self._in_backward():  # a checkpointed block recomputed: part of its backward segment
                return
            self._close()
            self._open = (n, s, pos, self._traversal[n])
            self._open_seq = torch._C._autograd._get_sequence_nr()
        return hook

    def _close(self) -> None:
        if self._open is None:
            return
        hi = torch._C._autograd._get_sequence_nr()
        if hi > self._open_seq:
            self._seq_lo.append(self._open_seq)
            self._seq_hi.append(hi)
            self._seq_tag.append(self._open)
        self._open = None

    # -- where an event happens
    def _where(self) -> tuple[tuple | None, bool]:
        """(tag, backward) of the segment running now: tag (net, stack, pos, traversal) or None."""
        node = torch._C._current_autograd_node()
        if node is None:
            return self._open, False
        seq = node._sequence_nr()
        if seq == _NO_SEQUENCE:  # gradient accumulation: the block of the node that just ran, if it is this one
            var = getattr(node, "variable", None)
            block = self._param_block.get(id(var)) if var is not None else None
            last = self._last_backward
            return (last if last is not None and block == last[:3] else None), True
        i = bisect.bisect_right(self._seq_lo, seq) - 1
        tag = self._seq_tag[i] if i >= 0 and seq < self._seq_hi[i] else None
        self._last_backward = tag
        return tag, True

    def _copies(self, tag: tuple | None) -> int:
        if tag is None:
            return 0
        n, s, pos, _ = tag
        return self._networks[n][1].stacks[s].copies.get(pos, 0)

    def _family(self, tag: tuple, backward: bool) -> _Family | None:
        k = self._copies(tag)
        if k == 0:
            return None
        key = (tag, backward)
        fam = self.families.get(key)
        if fam is None:
            fam = self.families[key] = _Family(k, backward)
        return fam

    def _event(self, delta: int, fam: _Family | None) -> None:
        i = len(self.deltas)
        self.deltas.append(delta)
        if fam is not None:
            if fam.first < 0:
                fam.first = i
            fam.last = i
            fam.deltas.append(delta)

    # -- called by LiveBytes
    def owner_of(self, t) -> tuple | None:
        if not isinstance(t, torch.Tensor):
            return None
        key = t.untyped_storage()._cdata
        born = self._born.get(key)
        if born is not None and born[1] is not None:
            return born[1]
        return self._owner.get(key)

    def born(self, key: int, n: int, owner: tuple | None) -> None:
        if not self.recording:
            return
        tag, backward = self._where()
        fam = self._family(tag, backward)
        if fam is not None:
            self._born[key] = (fam, tag[:3], tag)
            self._event(n, fam)
        elif owner is not None and tag is None:  # per-parameter, outside any block: made k + 1 times over
            self._born[key] = (None, owner, None)
            self._event(n * (1 + self._networks[owner[0]][1].stacks[owner[1]].copies[owner[2]]), None)
        else:
            self._event(n, None)

    def died(self, key: int, n: int) -> None:
        born = self._born.pop(key, None)
        if not self.recording:
            return
        tag, backward = self._where()
        here = self._family(tag, backward)
        if born is None:
            self._event(-n, here)
            return
        fam, owner, born_tag = born
        k = self._networks[owner[0]][1].stacks[owner[1]].copies[owner[2]]
        # each copy frees its own: in a segment of the same block (its copies repeat the event) or in a
        # neighbour's segment of the same pass through the network (the hand-over between blocks)
        same_block = here is not None and tag[:3] == owner
        same_pass = fam is not None and tag is not None and tag[0] == born_tag[0] and tag[3] == born_tag[3]
        self._event(-n if same_block or same_pass else -n * (1 + k), here)

    def add_flops(self, f: int) -> int:
        """Count an op's FLOPs; returns them at the full depth."""
        if not (self.recording and self.flops):
            return f
        tag, _ = self._where()
        f *= 1 + self._copies(tag)
        self.flops[-1] += f
        return f

    def boundary(self) -> None:
        if self.recording:
            self.boundaries.append(len(self.deltas))
            self.flops.append(0)

    def step_begin(self) -> None:
        if self.recording:
            self.steps.append([len(self.deltas), -1])

    def step_end(self) -> None:
        if self.recording and self.steps:
            self.steps[-1][1] = len(self.deltas)

    # -- the full depth
    def deep(self) -> tuple[list[int], list[int], list[tuple[int, list[tuple[int, int]]]]]:
        """Per component (in the order of `boundary` calls): the full network's peak of the bytes created
        during the iteration, its FLOPs, and its peak apart from the optimizer steps with each step's level at
        its start and own peak above that (as `LiveBytes.steps_apart`)."""
        before: dict[int, list[_Family]] = {}
        after: dict[int, list[_Family]] = {}
        for fam in self.families.values():
            if fam.first < 0:
                continue
            (before if fam.backward else after).setdefault(fam.first if fam.backward else fam.last, []).append(fam)
        step_at = {lo: (hi if hi >= 0 else len(self.deltas)) for lo, hi in self.steps}
        peaks: list[int] = []
        apart: list[tuple[int, list[tuple[int, int]]]] = []
        level = 0
        ends = self.boundaries[1:] + [len(self.deltas)]
        for start, end in zip(self.boundaries, ends):
            peak = outside = level
            steps: list[tuple[int, int]] = []
            step_end = -1  # the event that ends the step running, or -1

            def reached(top: int) -> None:
                nonlocal peak, outside
                peak = max(peak, top)
                if step_end >= 0:
                    steps[-1] = (steps[-1][0], max(steps[-1][1], top - steps[-1][0]))
                else:
                    outside = max(outside, top)

            for i in range(start, end):
                if i in step_at:
                    step_end = step_at[i]
                    steps.append((level, 0))
                if i == step_end:
                    step_end = -1
                for fam in before.get(i, ()):
                    level, top = _insert(fam, level, level)
                    reached(top)
                level += self.deltas[i]
                reached(level)
                for fam in after.get(i, ()):
                    level, top = _insert(fam, level, level)
                    reached(top)
            peaks.append(peak)
            apart.append((outside, steps))
        return peaks, list(self.flops), apart


def _representatives(networks):
    """(backbone, optimizer, representative block, copies) of every cut stack of every network."""
    for backbone, cut, opt in networks:
        for stack, blocks in zip(cut.stacks, stack_modules(backbone, cut)):
            for pos, k in stack.copies.items():
                yield backbone, opt, blocks[pos], k


def extra_static_bytes(networks) -> int:
    """Parameters, buffers and optimizer states of the copies (networks as `DepthRecorder` takes them)."""
    return sum(k * _block_bytes(block, opt) for _, opt, block, k in _representatives(networks))


def extra_grad_bytes(networks, backbone: nn.Module) -> int:
    """Gradients of the copies of one network's representatives."""
    return sum(k * _bytes(p for p in block.parameters() if p.requires_grad)
               for net, _, block, k in _representatives(networks) if net is backbone)


def _insert(fam: _Family, level: int, peak: int) -> tuple[int, int]:
    """k copies of a segment, one after the other, from `level`."""
    run, top = 0, 0
    for d in fam.deltas:
        run += d
        top = max(top, run)
    peak = max(peak, level + top + max(0, (fam.k - 1) * run))
    return level + fam.k * run, peak


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _block_bytes(block: nn.Module, opt) -> int:
    states = [v for p in block.parameters() for v in (opt.state.get(p, {}).values() if opt is not None else ())
              if isinstance(v, torch.Tensor)]
    return _bytes(list(block.parameters()) + list(block.buffers()) + states)
