"""The network passes an iteration cannot avoid, recorded while it runs and timed again alone.

`PassRecorder.attach(distiller)` wraps, on the instances only, the calls that are network passes:

    generator / fake_score / teacher .forward     (the teacher's guided forward is one batched 2B call)
    discriminator .forward, .real_fake_logits, .encode_text
    codec .decode                                 (VAE decode in front of the VFM discriminator)

and the calls timed in place: each optimizer's `step` and the Distiller's `_clip` ("optimizer"), and
`losses.ida_update_modules` ("ida"). Sections add a tag to the passes made inside them and are timed in
place too: `losses.isg_target` ("isg") and `few_step.backward_simulate` ("backsim"). Only the outermost
pass of a nest is recorded (DMD2's head runs the fake score's body inside the discriminator's pass).

`replay()` then times each recorded pass alone on the same inputs: a forward under `no_grad` when the
iteration ran it without gradients, else the forward and one backward from its outputs, with every
parameter's requires_grad set as it was at the call (D frozen during G's step gives input gradients only)
and the inputs' requires_grad as they were, under the autocast the pass ran under. The sum of those
times plus the in-place optimizer and IDA times is the iteration's limit: what the same passes cost with
nothing around them. Replay leaves no gradients behind (every .grad is set to None), but moves stateful
layers (spectral-norm power iterations, batch-norm statistics): benchmark runs only. On a GPU every time is
read after the device has finished (senseflow.bench.clock).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from senseflow import losses
from senseflow.bench.clock import now


@dataclass
class Pass:
    name: str
    tags: tuple[str, ...]
    fn: Callable
    args: tuple
    kwargs: dict
    grad: bool
    flags: tuple[bool, ...]
    input_grad: tuple[bool, ...]  # per tensor found in args (in order), whether it required grad
    in_place: float = 0.0         # seconds of its forward inside the iteration (its backward is not separable)
    autocast: tuple[str, torch.dtype] | None = None  # (device type, dtype) of the autocast it ran under


def _autocast_now(device: str) -> tuple[str, torch.dtype] | None:
    kind = torch.device(device).type
    return (kind, torch.get_autocast_dtype(kind)) if torch.is_autocast_enabled(kind) else None


def _autocast(state: tuple[str, torch.dtype] | None):
    return torch.autocast(state[0], dtype=state[1]) if state else contextlib.nullcontext()


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _detach(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, tuple):
        return tuple(_detach(o) for o in obj)
    if isinstance(obj, list):
        return [_detach(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    return obj


def _with_grad(obj, flags: list[bool]):
    """obj with its tensors (in _tensors order) made leaves that require grad where flags says so."""
    if isinstance(obj, torch.Tensor):
        need = flags.pop(0)
        return obj.detach().requires_grad_(True) if need and obj.is_floating_point() else obj
    if isinstance(obj, tuple):
        return tuple(_with_grad(o, flags) for o in obj)
    if isinstance(obj, list):
        return [_with_grad(o, flags) for o in obj]
    if isinstance(obj, dict):
        return {k: _with_grad(v, flags) for k, v in obj.items()}
    return obj


@dataclass
class PassRecorder:
    device: str = "cpu"           # where the passes run: on a GPU each timing waits for it (senseflow.bench.clock)
    recording: bool = False
    passes: list[Pass] = field(default_factory=list)
    in_place: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # seconds, this iteration
    _depth: int = 0
    _tags: list[str] = field(default_factory=list)
    _params: list[torch.nn.Parameter] = field(default_factory=list)
    _undo: list[Callable[[], None]] = field(default_factory=list)

    # ------------------------------------------------------------------ wrapping
    def attach(self, distiller) -> "PassRecorder":
        self._params = list({id(p): p for p in distiller.parameters()}.values())
        for name in ("generator", "fake_score", "teacher"):
            self._wrap_pass(name, getattr(distiller, name), "forward")
        d = distiller.discriminator
        if d is not None:
            for method in ("forward", "real_fake_logits", "encode_text"):
                if hasattr(d, method):
                    self._wrap_pass("discriminator", d, method)
        if hasattr(distiller.codec, "decode"):
            self._wrap_pass("vae_decode", distiller.codec, "decode")
        for opt in (distiller.opt_g, distiller.opt_f, distiller.opt_d):
            if opt is not None:
                self._wrap_timed("optimizer", opt, "step")
        self._wrap_timed("optimizer", distiller, "_clip")
        self._wrap_timed("ida", losses, "ida_update_modules")
        self._wrap_section("isg", losses, "isg_target")
        self._wrap_section("backsim", distiller.few_step, "backward_simulate")
        return self

    def detach(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def _patch(self, owner, attr: str, wrapper) -> None:
        had = attr in vars(owner) if not isinstance(owner, type) else True
        old = vars(owner).get(attr) if had else None
        setattr(owner, attr, wrapper)
        self._undo.append(lambda: setattr(owner, attr, old) if had else delattr(owner, attr))

    def _wrap_pass(self, name: str, owner, attr: str) -> None:
        fn = getattr(owner, attr)
        rec = self

        def wrapper(*args, **kwargs):
            if not rec.recording or rec._depth:
                rec._depth += 1
                try:
                    return fn(*args, **kwargs)
                finally:
                    rec._depth -= 1
            ins = _tensors((args, kwargs))
            ps = Pass(name, tuple(rec._tags), fn, _detach(args), _detach(kwargs), torch.is_grad_enabled(),
                      tuple(p.requires_grad for p in rec._params), tuple(t.requires_grad for t in ins),
                      autocast=_autocast_now(rec.device))
            rec.passes.append(ps)
            rec._depth += 1
            t0 = now(rec.device)
            try:
                return fn(*args, **kwargs)
            finally:
                ps.in_place = now(rec.device) - t0
                rec._depth -= 1

        self._patch(owner, attr, wrapper)

    def _wrap_timed(self, tag: str, owner, attr: str) -> None:
        fn = getattr(owner, attr)
        rec = self

        def wrapper(*args, **kwargs):
            if not rec.recording:  # no clock read: on a GPU each one waits for the queued kernels
                return fn(*args, **kwargs)
            t0 = now(rec.device)
            try:
                return fn(*args, **kwargs)
            finally:
                rec.in_place[tag] += now(rec.device) - t0

        self._patch(owner, attr, wrapper)

    def _wrap_section(self, tag: str, owner, attr: str) -> None:
        fn = getattr(owner, attr)
        rec = self

        def wrapper(*args, **kwargs):
            rec._tags.append(tag)
            timed = rec.recording  # no clock read otherwise: on a GPU each one waits for the queued kernels
            t0 = now(rec.device) if timed else 0.0
            try:
                return fn(*args, **kwargs)
            finally:
                rec._tags.pop()
                if timed:
                    rec.in_place[tag] += now(rec.device) - t0

        self._patch(owner, attr, wrapper)

    # ------------------------------------------------------------------ one iteration
    def start(self) -> None:
        self.passes, self.in_place, self.recording = [], defaultdict(float), True

    def stop(self) -> None:
        self.recording = False

    def replay(self) -> list[dict[str, Any]]:
        """Time each recorded pass alone (see the module docstring): one dict per pass, seconds."""
        old = [p.requires_grad for p in self._params]
        rows = []
        try:
            for ps in self.passes:
                for p, f in zip(self._params, ps.flags):
                    p.requires_grad_(f)
                if ps.grad:
                    args, kwargs = _with_grad((ps.args, ps.kwargs), list(ps.input_grad))
                    t0 = now(self.device)
                    with torch.enable_grad(), _autocast(ps.autocast):
                        out = ps.fn(*args, **kwargs)
                        outs = [t for t in _tensors(out) if t.requires_grad]
                        if outs:
                            torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])
                    seconds = now(self.device) - t0
                    backward = bool(outs)
                else:
                    t0 = now(self.device)
                    with torch.no_grad(), _autocast(ps.autocast):
                        ps.fn(*ps.args, **ps.kwargs)
                    seconds = now(self.device) - t0
                    backward = False
                rows.append({"name": ps.name, "tags": list(ps.tags), "backward": backward, "seconds": seconds,
                             "in_place": ps.in_place})
                for p in self._params:
                    p.grad = None
        finally:
            for p, f in zip(self._params, old):
                p.requires_grad_(f)
        return rows
