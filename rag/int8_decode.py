"""int8 weights for the decode steps of a bf16 or float32 model on a CPU.

A decode step multiplies a handful of token rows (K documents x beams) by every weight matrix
of the model, so its time is the time to stream the weights from memory, not arithmetic: at
bf16 the 135M generator reads 269 MB per step. :class:`Int8DecodeLinear` keeps the bf16 weight
for the prefill (long prompts, where AMX bf16 matmuls are compute-bound and fast) and a per-output-
channel int8 copy (symmetric, scale = max |w| / 127, the "weight-only int8" of torchao / gpt-fast)
that the few-row decode forwards read instead: half the bytes. Activations stay bf16
(``torch._weight_int8pack_mm`` dequantises inside the kernel).

float32 models (CPUs without AMX or AVX512-BF16, where bf16 matmuls are slow) read four times fewer bytes from an int8
copy: the same per-output-channel weights, packed for fbgemm's dynamic-quantised linear
(``torch.ops.quantized.linear_dynamic``: each row of activations is quantised to int8 on the fly,
multiplied with AVX2 / AVX-512 integer kernels, and rescaled to float32). Measured on a 2-core AMD EPYC
(AVX2 only): the 576x49152 head, 4 rows, 229 ms float32 vs 33 ms int8 under load.

The module is an ``nn.Linear`` subclass with the same parameters, so PEFT wraps it like any
linear layer (LoRA adds its update on top) and ``state_dict`` is unchanged; the int8 copy is a
non-persistent buffer. If the weight changes (merging an adapter into it), call
:func:`refresh_int8` or the int8 copy is stale.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from ingest.hardware import cpu_bf16_unit

logger = logging.getLogger(__name__)


def default_max_rows(bf16_unit: str | None) -> int:
    """Most token rows a forward may have and still read the int8 copy, for a CPU whose bf16 unit is ``bf16_unit``
    (:func:`ingest.hardware.cpu_bf16_unit`). The int8 kernel dequantises inside the matmul: cheaper than bf16 while
    the weights' bytes dominate, dearer once the rows make it arithmetic. The 135M model's linear layers, 2 threads,
    on an AVX512-BF16 EPYC (no AMX): int8 takes 0.52x / 0.63x the bf16 time at 1 / 4 rows, 1.03x at 6, 1.49x at 16
    and 1.81x at 32 (BENCHMARKS.md "CPU paths"), so there only a single answer's K=4 rows take it. AMX CPUs keep
    32, the value int8 decode was introduced with on an AMX Xeon (its crossover there is not measured)."""
    return 32 if bf16_unit == "amx_bf16" else 4


#: A forward of at most this many token rows uses the int8 weights (decode steps, beams, the
#: abstention reference); longer ones (prefill, big decode batches) use the bf16 weight.
MAX_INT8_ROWS = default_max_rows(cpu_bf16_unit())


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``weight ~= q * scale[:, None]``.

    Args:
        weight: ``(N, K)`` float weight.

    Returns:
        ``q`` ``(N, K)`` int8 and ``scale`` ``(N,)`` float32.
    """
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8DecodeLinear(nn.Linear):
    """A bf16 linear layer whose few-row forwards read an int8 copy of its weight."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._add_int8_buffers()

    def _add_int8_buffers(self) -> None:
        """Empty until :meth:`refresh`; not persistent, so ``state_dict`` stays a plain Linear's."""
        self.register_buffer("weight_int8", torch.empty(0, dtype=torch.int8), persistent=False)
        self.register_buffer("weight_scale", torch.empty(0), persistent=False)
        self._packed = None  # float32 weights: fbgemm's packed int8 weight (not a tensor, never saved)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8DecodeLinear:
        """Wrap ``linear`` without copying it: the new module shares its weight and bias parameters
        (tied embeddings stay tied)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        new._add_int8_buffers()
        new.refresh()
        return new

    def refresh(self) -> None:
        """(Re)build the int8 copy from the current weight."""
        q, scale = quantize_rows(self.weight)
        if self.weight.dtype == torch.float32:
            self._packed = _pack_dynamic(q, scale, self.bias)
            self.weight_int8 = torch.empty(0, dtype=torch.int8)  # the packed copy holds the int8 weight
            self.weight_scale = scale
            return
        self.weight_int8 = q.to(self.weight.device)
        self.weight_scale = scale.to(device=self.weight.device, dtype=self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features if x.numel() else 0
        if self._packed is not None and 0 < rows <= MAX_INT8_ROWS and x.dtype == torch.float32:
            flat = x.reshape(rows, self.in_features).contiguous()
            out = torch.ops.quantized.linear_dynamic(flat, self._packed, True)  # bias is in the packed weight
            return out.view(*x.shape[:-1], self.out_features)
        if 0 < rows <= MAX_INT8_ROWS and x.dtype == self.weight_scale.dtype and self.weight_int8.numel():
            flat = x.reshape(rows, self.in_features).contiguous()
            if flat.data_ptr() % 64:  # the kernel crashes on inputs that are not 32-byte aligned (torch 2.13)
                flat = flat.clone()
            out = torch._weight_int8pack_mm(flat, self.weight_int8, self.weight_scale)
            if self.bias is not None:
                out = out + self.bias
            return out.view(*x.shape[:-1], self.out_features)
        return super().forward(x)


def _pack_dynamic(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """fbgemm's packed weight for ``linear_dynamic``: int8 ``q`` ``(N, K)`` with per-row ``scale`` ``(N,)``."""
    with warnings.catch_warnings():  # torch 2.13 deprecates quantized tensors; fbgemm's packed linear still needs one
        warnings.simplefilter("ignore", UserWarning)
        qweight = torch._make_per_channel_quantized_tensor(
            q.cpu(), scale.double().cpu(), torch.zeros(q.shape[0], dtype=torch.long), 0
        )
    return torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())


def _supported(linear: nn.Linear) -> bool:
    """A CPU weight, bf16 with K % 16 == 0 (the bf16 kernel silently returns garbage for other K,
    measured on torch 2.13) or float32; :func:`_probe` also checks each (dtype, K) once against the reference."""
    w = linear.weight
    if w.device.type != "cpu":
        return False
    if w.dtype == torch.float32:
        return True
    return w.dtype == torch.bfloat16 and linear.in_features % 16 == 0


@torch.no_grad()
def _probe(in_features: int, dtype: torch.dtype = torch.bfloat16) -> bool:
    """One small matmul against the reference; False if this torch build lacks or breaks the kernel."""
    if dtype == torch.float32:
        return _probe_dynamic(in_features)
    try:
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(32, in_features, generator=gen)
        q, s = quantize_rows(w)
        x = torch.randn(3, in_features, generator=gen).to(torch.bfloat16)
        got = torch._weight_int8pack_mm(x, q, s.to(torch.bfloat16)).float()
        ref = x.float() @ (q.float() * s[:, None]).T
        return bool(torch.allclose(got, ref, atol=0.05 * float(ref.abs().max()) + 1e-3, rtol=0.02))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


@torch.no_grad()
def _probe_dynamic(in_features: int) -> bool:
    """The float32 path: fbgemm's dynamic int8 linear is present and close to the reference."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(32, in_features, generator=gen)
        q, s = quantize_rows(w)
        x = torch.randn(3, in_features, generator=gen)
        got = torch.ops.quantized.linear_dynamic(x, _pack_dynamic(q, s, None), True)
        ref = x @ (q.float() * s[:, None]).T
        return bool(torch.allclose(got, ref, atol=0.05 * float(ref.abs().max()) + 1e-3, rtol=0.05))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


@torch.no_grad()
def convert_for_int8_decode(model: nn.Module) -> int:
    """Replace every supported ``nn.Linear`` of ``model`` (in place) by an :class:`Int8DecodeLinear`
    sharing its parameters. Returns the number of layers converted (0 where the kernel is missing)."""
    probes: dict[tuple[torch.dtype, int], bool] = {}
    targets = []
    for name, module in model.named_modules():
        if type(module) is nn.Linear and _supported(module):
            key = (module.weight.dtype, module.in_features)
            if key not in probes:
                probes[key] = _probe(key[1], key[0])
            if probes[key]:
                targets.append(name)
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8DecodeLinear.from_linear(getattr(parent, child)))
    if targets:
        logger.info("int8 decode weights for %d linear layers", len(targets))
    return len(targets)


@torch.no_grad()
def refresh_int8(model: nn.Module) -> None:
    """Rebuild the int8 copies after the bf16 weights changed."""
    for module in model.modules():
        if isinstance(module, Int8DecodeLinear):
            module.refresh()
