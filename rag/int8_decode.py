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
(``torch.ops.quantized.linear_dynamic``: activations quantised to int8 on the fly, multiplied with AVX2 / AVX-512
integer kernels, rescaled to float32). fbgemm picks ONE activation scale per call, from the whole input, so a row's
result would depend on the other rows of its batch; :func:`_per_row_dynamic` makes the scale per row: each row is
divided by its own max |x| and a constant anchor row holding -1 and +1 is appended, so every call quantises on the
same fixed grid, the integer accumulation is exact, and the row is multiplied back by its max |x| (per-token
symmetric int8 activations, as LLM.int8() / SmoothQuant's per-token mode). A row's result is then bit-identical
alone or in any batch. The float32 path reads the copy in every forward of one token per sequence (decode steps,
whatever the batch size: measured 0.23-0.43x the float32 time of the 135M model's linear layers at 1-64 rows on a
2-core AVX2 EPYC); prefill (several tokens per sequence) keeps the float32 weights. It is opt-in for float32
(``generator.int8_decode=on``; ``auto`` is bf16 only): end to end it gives 1.1-1.25x the answers/s there, but the int8
rounding of activations turns float32's ~1e-7 differences between batch shapes (attention over left padding, prefill
shapes) into different roundings, so batched greedy answers equal solo ones far less often (10/32 against 32/32,
BENCHMARKS.md "CPU paths"), the prompt-prefix cache keeps the tokens but log-probabilities only to ~1e-2, and
held-out F1 moved -0.013 / -0.027 (rag-token / rag-sequence, 60 questions).

The module is an ``nn.Linear`` subclass with the same parameters, so PEFT wraps it like any
linear layer (LoRA adds its update on top) and ``state_dict`` is unchanged; the int8 copy is a
non-persistent buffer. If the weight changes (merging an adapter into it), call
:func:`refresh_int8` or the int8 copy is stale.
"""

from __future__ import annotations

import functools
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
            self._packed = _pack_dynamic(q, scale, None)  # bias added after the per-row rescaling
            self.weight_int8 = torch.empty(0, dtype=torch.int8)  # the packed copy holds the int8 weight
            self.weight_scale = scale
            return
        self.weight_int8 = q.to(self.weight.device)
        self.weight_scale = scale.to(device=self.weight.device, dtype=self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is not None and x.dtype == torch.float32:
            tokens = _tokens(x)
            if x.numel() and reads_int8(x.numel() // (self.in_features * tokens), tokens, x.dtype):
                out = _per_row_dynamic(x.reshape(-1, self.in_features), self._packed)
                if self.bias is not None:
                    out = out + self.bias
                return out.view(*x.shape[:-1], self.out_features)
            return super().forward(x)
        rows = x.numel() // self.in_features if x.numel() else 0
        if rows and reads_int8(rows, 1, x.dtype) and x.dtype == self.weight_scale.dtype and self.weight_int8.numel():
            flat = x.reshape(rows, self.in_features).contiguous()
            if flat.data_ptr() % 64:  # the kernel crashes on inputs that are not 32-byte aligned (torch 2.13)
                flat = flat.clone()
            out = torch._weight_int8pack_mm(flat, self.weight_int8, self.weight_scale)
            if self.bias is not None:
                out = out + self.bias
            return out.view(*x.shape[:-1], self.out_features)
        return super().forward(x)


def reads_int8(sequences: int, tokens: int, dtype: torch.dtype) -> bool:
    """Whether a forward of ``sequences`` rows of ``tokens`` new tokens each reads the int8 copy.

    float32: every one-token-per-sequence forward (a decode step at any batch size; its rows do not depend on each
    other). bf16: at most :data:`MAX_INT8_ROWS` token rows in all (the weight-only kernel is dearer than bf16 past
    that). :data:`MAX_INT8_ROWS` = 0 (:func:`rag.decoding._full_weights`) turns both off."""
    if MAX_INT8_ROWS <= 0 or sequences <= 0 or tokens <= 0:
        return False
    if dtype == torch.float32:
        return tokens == 1
    return sequences * tokens <= MAX_INT8_ROWS


def _tokens(x: torch.Tensor) -> int:
    """Tokens per sequence of a linear layer's input: ``(B, T, H)`` -> T; a 2-D ``(N, H)`` input is read as one
    sequence of N tokens (a decode step only when N = 1), so a flattened prefill never takes the int8 path."""
    return x.shape[-2] if x.dim() >= 2 else 1


@functools.cache
def _anchor(width: int) -> torch.Tensor:
    """The ``(1, width)`` row holding -1 and +1 that pins fbgemm's activation range to [-1, 1] (one per width)."""
    row = torch.zeros(1, width)
    row[0, 0], row[0, -1] = -1.0, 1.0
    return row


def _per_row_dynamic(flat: torch.Tensor, packed) -> torch.Tensor:
    """fbgemm's dynamic int8 linear (no bias) with one activation scale per row, batch-invariant bit for bit.

    Each row is divided by its max |x| (so lies in [-1, 1]) and the anchor row fixes the call's range to exactly
    [-1, 1]: the quantisation grid is the same in every call, the int8 x int8 -> int32 accumulation is exact and the
    rescaling is per element, so a row's output does not depend on the other rows."""
    scale = flat.abs().amax(dim=1, keepdim=True).clamp(min=1e-30)
    scaled = torch.cat([flat / scale, _anchor(flat.shape[1])])
    out = torch.ops.quantized.linear_dynamic(scaled, packed, True)
    return out[: flat.shape[0]] * scale


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
        got = _per_row_dynamic(x, _pack_dynamic(q, s, None))
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
