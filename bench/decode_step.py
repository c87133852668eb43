"""Where one decode step's time goes: wall time against device time, for the bundled model's shape.

A decode step of a small model is one token per row through every layer: on a GPU it is ~1200 small
kernels, so its wall time can be the CPU launching them (and whatever the attention backend does on the CPU)
rather than GPU work. This script builds a randomly initialised model of SmolLM2-135M's shape (the cost of a
forward does not depend on the weights' values), prefills ``--rows`` rows of ``--context`` tokens, then times
decode steps (forward + log-softmax + argmax back on the host, as generation does) with transformers'
``DynamicCache`` and with ragqa's in-place cache (:mod:`rag.kv_cache`), and profiles one step: kernels
launched and device-busy milliseconds. ``--attention`` picks the SDPA backends (``default`` lets PyTorch
choose, which on Hopper GPUs includes cuDNN; ``no-cudnn`` is what the generator uses, see
``GeneratorConfig.cudnn_attention``)::

    python -m bench.decode_step --device cuda --attention default,no-cudnn
    python -m bench.decode_step --int8-rows 1,2,4,6,8,16,32     # CPU: int8 decode copy against bf16, by rows
    python -m bench.decode_step --int8-float32 1,4,16,64        # CPU: the float32 model's int8 copy, by rows
    python -m bench.decode_step --cpu-breakdown 4,32,64        # CPU: where a batched decode step's time goes
    python -m bench.decode_step --invariance                   # does a row's result depend on its batch?
    python -m bench.decode_step --threads 3,32                 # CPU: a step in the main thread vs a worker thread

``--cpu-breakdown`` builds the model as the server's generator runs it on this CPU (bf16 with the int8 decode copy
where bf16 is fast, else float32; ``RAGQA_CPU_BF16=0`` forces float32), prefills left-padded rows of 250-400 tokens
into the in-place cache (the scheduler's batch: every answer's rows have their own prompt lengths), and profiles
decode steps (``_advance``: forward + log-softmax), splitting their CPU time into linear layers, attention and the
rest.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any


def launch_overhead_us(device: str) -> tuple[float, float]:
    """(microseconds per queued tiny kernel, per kernel + host round trip) on ``device``."""
    import torch

    x = torch.zeros(1, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(5000):
        x.add_(1)
    sync()
    queued = (time.perf_counter() - t) / 5000 * 1e6
    t = time.perf_counter()
    for _ in range(500):
        x.add_(1)
        x.item()
    return queued, (time.perf_counter() - t) / 500 * 1e6


def smollm2_135m_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rope_theta=100000.0,
    )


def step_profile(model, cache, rows: int, context: int, device: str, steps: int = 20) -> dict[str, float]:
    """Prefill ``rows`` x ``context`` tokens into ``cache``, then time ``steps`` decode steps and profile one."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    vocab = model.config.vocab_size
    with torch.inference_mode():
        model(input_ids=torch.randint(0, vocab, (rows, context), device=device), past_key_values=cache, use_cache=True)
        token = torch.randint(0, vocab, (rows, 1), device=device)

        def step() -> None:
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            out.logits[:, -1].float().log_softmax(-1).argmax(-1).cpu()

        for _ in range(3):
            step()
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        wall_ms = (time.perf_counter() - t) / steps * 1000
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            step()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    top = max(prof.key_averages(), key=lambda e: e.cpu_time_total)
    return {
        "wall_ms": wall_ms,
        "kernels": float(len(kernels)),
        "device_busy_ms": sum(e.device_time for e in kernels) / 1000,
        "top_op": top.key,
        "top_op_cpu_ms": top.cpu_time_total / 1000,
    }


def linear_shapes() -> dict[tuple[int, int], int]:
    """``{(in, out): count}`` of the linear layers in one SmolLM2-135M forward (q, o / k, v / gate, up / down per
    layer, and the vocabulary head)."""
    cfg = smollm2_135m_config()
    h, ff = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.hidden_size * cfg.num_key_value_heads // cfg.num_attention_heads
    per_forward = {(h, h): 2, (h, kv): 2, (h, ff): 2, (ff, h): 1}
    return {shape: n * cfg.num_hidden_layers for shape, n in per_forward.items()} | {(h, cfg.vocab_size): 1}


def seconds_per_call(f, x, n: int = 20, warmup: int = 3) -> float:
    """Mean seconds of ``f(x)`` over ``n`` calls after ``warmup``."""
    for _ in range(warmup):
        f(x)
    t = time.perf_counter()
    for _ in range(n):
        f(x)
    return (time.perf_counter() - t) / n


def int8_against_bf16(rows_list: list[int]) -> list[tuple[float, ...]]:
    """Milliseconds of the linear layers of one SmolLM2-135M forward on the CPU at every row count: ``(rows, bf16,
    int8 weight-only, W8A8 per call, per-token int matmul alone, per-token W8A8)``. bf16 is ``nn.Linear``; int8
    weight-only is :class:`rag.int8_decode.Int8DecodeLinear` (``torch._weight_int8pack_mm``); W8A8 per call is
    fbgemm's dynamic linear (one activation scale per call); per-token W8A8 quantises each row of the input to int8
    in Python and multiplies with ``torch._int_mm`` (int8 x int8 -> int32), reported with and without that
    quantisation."""
    import torch
    from torch import nn

    from rag import int8_decode

    counts = linear_shapes()
    torch.manual_seed(0)
    layers = {shape: nn.Linear(*shape, bias=False).to(torch.bfloat16) for shape in counts}
    quant = {shape: int8_decode.Int8DecodeLinear.from_linear(layer) for shape, layer in layers.items()}

    # fbgemm's dynamic int8 (W8A8: per-output-channel int8 weights, each forward's activations quantised to int8
    # with one scale): what the float32 path's int8 copy runs, timed here on bf16 inputs for comparison.
    packed = {
        shape: int8_decode._pack_dynamic(*int8_decode.quantize_rows(layer.weight), None)
        for shape, layer in layers.items()
    }

    def w8a8(shape):
        return lambda x: torch.ops.quantized.linear_dynamic(x.float(), packed[shape], True).to(torch.bfloat16)

    transposed = {}
    for shape, layer in layers.items():
        q, scale = int8_decode.quantize_rows(layer.weight)
        transposed[shape] = (q.t().contiguous(), scale)

    def per_token(shape):
        q_t, scale = transposed[shape]

        def f(x):
            xf = x.float()
            x_scale = xf.abs().amax(-1, keepdim=True).clamp(min=1e-8) / 127
            acc = torch._int_mm(torch.round(xf / x_scale).to(torch.int8), q_t)
            return (acc.float() * x_scale * scale).to(torch.bfloat16)

        return f

    def int_mm_only(shape):
        q_t = transposed[shape][0]
        return lambda x: torch._int_mm(x, q_t)

    previous, int8_decode.MAX_INT8_ROWS = int8_decode.MAX_INT8_ROWS, 1 << 20
    out = []
    try:
        with torch.inference_mode():
            for rows in rows_list:
                times = [0.0] * 5
                for shape, n in counts.items():
                    x = torch.randn(rows, shape[0], dtype=torch.bfloat16)
                    x8 = torch.randint(-127, 128, (rows, shape[0]), dtype=torch.int8)
                    runs = [(layers[shape], x), (quant[shape], x), (w8a8(shape), x), (int_mm_only(shape), x8)]
                    for i, (f, inp) in enumerate([*runs, (per_token(shape), x)]):
                        times[i] += n * seconds_per_call(f, inp)
                out.append((float(rows), *(t * 1000 for t in times)))
    finally:
        int8_decode.MAX_INT8_ROWS = previous
    return out


def int8_against_float32(rows_list: list[int]) -> list[tuple[float, float, float, float]]:
    """Milliseconds of the linear layers of one SmolLM2-135M decode step (one token per row) in float32 on the CPU:
    ``(rows, float32, int8 per-row scales, int8 one scale per call)``. float32 is ``nn.Linear``; per-row scales is
    :class:`rag.int8_decode.Int8DecodeLinear` on a float32 weight (fbgemm's dynamic linear, each row scaled by its
    own max |x| against a fixed grid: what ``generator.int8_decode=on`` runs for float32 models); one scale per call
    is fbgemm's dynamic linear as it comes (a row's result depends on its batch)."""
    import torch
    from torch import nn

    from rag import int8_decode

    counts = linear_shapes()
    torch.manual_seed(0)
    layers = {shape: nn.Linear(*shape, bias=False) for shape in counts}
    quant = {shape: int8_decode.Int8DecodeLinear.from_linear(layer) for shape, layer in layers.items()}

    def per_call(shape):
        packed = quant[shape]._packed
        return lambda x: torch.ops.quantized.linear_dynamic(x.view(-1, shape[0]), packed, True)

    out = []
    with torch.inference_mode():
        for rows in rows_list:
            times = [0.0] * 3
            for shape, n in counts.items():
                x = torch.randn(rows, 1, shape[0])
                for i, f in enumerate((layers[shape], quant[shape], per_call(shape))):
                    times[i] += n * seconds_per_call(f, x, n=10, warmup=2)
            out.append((float(rows), *(t * 1000 for t in times)))
    return out


def server_batch(rows: int, seed: int = 0) -> tuple[Any, Any, Any]:
    """``(model, state, tokens)``: the bundled model's shape as the server's generator runs it on this CPU (bf16 where
    bf16 is fast, else float32; ``RAGQA_CPU_BF16=0`` forces float32; the int8 decode copy as
    ``RAGQA_GENERATOR__INT8_DECODE`` says: auto = bf16 only), ``rows`` left-padded
    rows of 250-400 tokens prefilled into the in-place cache (the scheduler's batch), and a token per row."""
    import torch
    from transformers import LlamaForCausalLM

    from ingest.hardware import cpu_fast_bf16
    from rag.decoding import PrefillState
    from rag.int8_decode import convert_for_int8_decode
    from rag.kv_cache import new_cache

    torch.manual_seed(seed)
    cfg = smollm2_135m_config()
    cfg._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if cpu_fast_bf16() else torch.float32
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    setting = os.environ.get("RAGQA_GENERATOR__INT8_DECODE", "auto")  # as the generator does on a CPU
    if setting == "on" or (setting == "auto" and dtype == torch.bfloat16):
        convert_for_int8_decode(model)
    cache = new_cache(cfg)
    lengths = torch.randint(250, 400, (rows,))
    width = int(lengths.max())
    mask = (torch.arange(width)[None, :] >= (width - lengths)[:, None]).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        out = model(
            input_ids=torch.randint(0, cfg.vocab_size, (rows, width)),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
        state = PrefillState(
            next_logprobs=out.logits[:, -1].float().log_softmax(-1),
            past_key_values=cache,
            attention_mask=mask,
            next_positions=positions[:, -1:] + 1,
        )
    return model, state, torch.randint(0, cfg.vocab_size, (rows,))


def mean_step_ms(model: Any, state: Any, tokens: Any, steps: int, warmup: int = 3) -> float:
    """Mean milliseconds of a decode step (``_advance``: forward + log-softmax) after ``warmup`` untimed ones."""
    import torch

    from rag.decoding import _advance

    with torch.inference_mode():
        for _ in range(warmup):
            _advance(model, state, tokens)
        t = time.perf_counter()
        for _ in range(steps):
            _advance(model, state, tokens)
    return (time.perf_counter() - t) / steps * 1000


def cpu_breakdown(rows: int, steps: int = 10, seed: int = 0) -> dict[str, Any]:
    """Milliseconds of one CPU decode step of ``rows`` left-padded rows (250-400 cached tokens each), as the
    server's generator runs it: wall time, and the profiler's CPU time in linear layers (``aten::mm`` /
    ``aten::addmm`` / the int8 kernels), attention (``scaled_dot_product_attention``) and everything else."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from rag.decoding import _advance

    model, state, tokens = server_batch(rows, seed)
    dtype = next(model.parameters()).dtype
    wall = mean_step_ms(model, state, tokens, steps)
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            _advance(model, state, tokens)
    linear_ops = {"aten::mm", "aten::addmm", "aten::_weight_int8pack_mm", "quantized::linear_dynamic"}
    linear = attention = total = 0.0
    for e in prof.key_averages():
        total += e.self_cpu_time_total
        if e.key in linear_ops:
            linear += e.self_cpu_time_total
        elif "scaled_dot_product" in e.key or "attention" in e.key:
            attention += e.self_cpu_time_total
    scale = wall / total if total else 0.0  # profiler time -> share of the unprofiled wall time
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "wall_ms": wall,
        "linear_ms": linear * scale,
        "attention_ms": attention * scale,
        "other_ms": (total - linear - attention) * scale,
    }


def step_ms_by_thread(rows: int, steps: int = 20) -> dict[str, float]:
    """Milliseconds of a decode step of :func:`server_batch` run in this (main) thread and in a new thread."""
    import threading

    model, state, tokens = server_batch(rows)
    out: dict[str, float] = {}

    def timed(where: str) -> None:
        out[where] = mean_step_ms(model, state, tokens, steps)

    timed("main thread")
    worker = threading.Thread(target=timed, args=("worker thread",))
    worker.start()
    worker.join()
    return out


#: OpenMP settings compared by --threads: ragqa's default (ingest/__init__.py) and GNU OpenMP's own
THREAD_POLICIES = {"OMP_WAIT_POLICY=PASSIVE (ragqa's default)": "PASSIVE", "unset (GNU OpenMP: spin, then sleep)": None}


def thread_placement(rows: list[int]) -> list[dict[str, Any]]:
    """:func:`step_ms_by_thread` at each row count under each of :data:`THREAD_POLICIES`, one process per setting
    (OpenMP reads its environment when torch loads)."""
    import json
    import os
    import subprocess
    import sys

    results = []
    for label, policy in THREAD_POLICIES.items():
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        if policy:
            env["OMP_WAIT_POLICY"] = policy
        for n in rows:
            cmd = [sys.executable, "-m", "bench.decode_step", "--threads-worker", str(n)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            results.append({"policy": label, "rows": n, **json.loads(done.stdout.strip().splitlines()[-1])})
    return results


def linear_invariance(dtype: Any, rows: list[int], shapes: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Is a linear layer's output for one row the same whatever the batch holds? For each weight shape of the model
    (``(in, out)``), row 0's output at every ``rows`` count against 64 rows, bit for bit."""
    import torch

    cfg = smollm2_135m_config()
    h, f = cfg.hidden_size, cfg.intermediate_size
    shapes = shapes or [(h, h), (h, f), (f, h), (h, cfg.vocab_size)]
    gen = torch.Generator().manual_seed(0)
    equal, worst = 0, 0.0
    for n_in, n_out in shapes:
        w = torch.randn(n_out, n_in, generator=gen).to(dtype)
        x = torch.randn(max(rows + [64]), n_in, generator=gen).to(dtype)
        ref = torch.nn.functional.linear(x, w)[:1]
        for m in rows:
            out = torch.nn.functional.linear(x[:m], w)[:1]
            equal += int(torch.equal(out, ref))
            worst = max(worst, ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item())
    return {
        "dtype": str(dtype).replace("torch.", ""),
        "checks": len(shapes) * len(rows),
        "equal": equal,
        "max_diff": worst,
    }


def attention_invariance(dtype: Any, context: int, pads: list[int], side: str = "left") -> dict[str, Any]:
    """Does a decode row's attention output depend on the masked left padding in front of its tokens (what a batch
    adds to a row that would be alone)? One query (the model's grouped heads) over ``context`` cached tokens, against
    the same tokens behind ``p`` masked columns for every ``p`` in ``pads``: how many are bit-identical, and the
    largest difference. ``side="right"``: the padding after the tokens instead (each row's tokens from column 0),
    against the row behind the first of ``pads`` (the masked kernel path; an all-true mask may take another)."""
    import torch
    import torch.nn.functional as F

    cfg = smollm2_135m_config()
    kv, d = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // kv
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, kv, group, d, generator=gen).to(dtype)  # transformers packs a decode query's GQA heads so
    k = torch.randn(1, kv, context, d, generator=gen).to(dtype)
    v = torch.randn(1, kv, context, d, generator=gen).to(dtype)

    def padded(pad: int) -> torch.Tensor:
        zeros = torch.zeros(1, kv, pad, d, dtype=dtype)
        mask = torch.zeros(1, 1, 1, context + pad, dtype=torch.bool)
        if side == "left":
            mask[..., pad:] = True
            return F.scaled_dot_product_attention(q, torch.cat([zeros, k], 2), torch.cat([zeros, v], 2), attn_mask=mask)
        mask[..., :context] = True
        return F.scaled_dot_product_attention(q, torch.cat([k, zeros], 2), torch.cat([v, zeros], 2), attn_mask=mask)

    if side == "left":
        base = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(1, 1, 1, context, dtype=torch.bool))
    else:
        base, pads = padded(pads[0]), pads[1:]
    equal, worst = 0, 0.0
    for pad in pads:
        out = padded(pad)
        equal += int(torch.equal(out, base))
        worst = max(worst, (out.float() - base.float()).abs().max().item())
    return {
        "dtype": str(dtype).replace("torch.", ""),
        "context": context,
        "pads": len(pads),
        "equal": equal,
        "max_diff": worst,
    }


def main(argv: list[str] | None = None) -> int:
    import contextlib

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers import DynamicCache, LlamaForCausalLM

    from rag.kv_cache import new_cache

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", default="4,32,64", help="rows per step (K per rag-token answer x answers)")
    p.add_argument("--context", type=int, default=300, help="tokens already in the cache")
    p.add_argument("--attention", default="default,no-cudnn", help="SDPA backend choices to compare")
    p.add_argument(
        "--int8-rows",
        default=None,
        help="instead: time the int8 decode copy against bf16 on the CPU at these row counts (e.g. 1,2,4,6,8,16,32)",
    )
    p.add_argument(
        "--int8-float32",
        default=None,
        help="instead: time a float32 model's int8 decode copy (per-row and per-call activation scales) against "
        "float32 on the CPU at these row counts (e.g. 1,4,16,64)",
    )
    p.add_argument(
        "--cpu-breakdown",
        default=None,
        help="instead: split a CPU decode step of the server's batch into linear layers, attention and the rest, "
        "at these row counts (e.g. 4,32,64)",
    )
    p.add_argument(
        "--invariance",
        action="store_true",
        help="instead: check whether a row's linear-layer and attention outputs depend on the rest of its batch (bit "
        "for bit, bf16 and float32): why batched greedy answers can differ from answers given alone",
    )
    p.add_argument(
        "--threads",
        default=None,
        help="instead: a decode step at these row counts in the main thread and in a worker thread, with ragqa's "
        "OpenMP setting and GNU OpenMP's own (e.g. 3,32)",
    )
    p.add_argument("--threads-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads_worker:
        import json

        print(json.dumps(step_ms_by_thread(args.threads_worker)))
        return 0
    if args.threads:
        print("| OpenMP wait policy | rows | main thread ms | worker thread ms |\n|---|--:|--:|--:|")
        for r in thread_placement([int(x) for x in args.threads.split(",")]):
            print(f"| {r['policy']} | {r['rows']} | {r['main thread']:.1f} | {r['worker thread']:.1f} |", flush=True)
        return 0
    if args.invariance:
        print("| part | dtype | setting | bit-identical | largest difference |\n|---|---|---|--:|--:|")
        for dtype in (torch.bfloat16, torch.float32):
            li = linear_invariance(dtype, [1, 2, 4, 5, 8, 16, 32, 35, 48])
            print(
                f"| linear layers (4 shapes) | {li['dtype']} | row 0 of 1-48 rows vs 64 | "
                f"{li['equal']} / {li['checks']} | {li['max_diff']:.2e} (relative) |"
            )
            for context in (300, 600):
                for label, pads in (
                    ("left pads 1-127", list(range(1, 128))),
                    ("left pads 16-1024 by 16", list(range(16, 1025, 16))),
                    ("right pads 16-1024 by 7 (tokens from column 0)", list(range(16, 1025, 7))),
                ):
                    a = attention_invariance(
                        dtype, context, pads, side="right" if label.startswith("right") else "left"
                    )
                    print(
                        f"| decode attention | {a['dtype']} | {context} tokens, {label} | {a['equal']} / {a['pads']} | "
                        f"{a['max_diff']:.2e} |",
                        flush=True,
                    )
        return 0
    if args.int8_rows:
        print(
            "| rows | bf16 ms | int8 weight-only ms (/ bf16) | W8A8, one scale per call, ms (/ bf16) | "
            "per-token W8A8: int matmul alone ms | per-token W8A8, quantised in Python, ms (/ bf16) |\n"
            "|--:|--:|--:|--:|--:|--:|"
        )
        for rows, bf16, int8, dyn, core, tok in int8_against_bf16([int(r) for r in args.int8_rows.split(",")]):
            print(
                f"| {rows:.0f} | {bf16:.1f} | {int8:.1f} ({int8 / bf16:.2f}) | {dyn:.1f} ({dyn / bf16:.2f}) | "
                f"{core:.1f} | {tok:.1f} ({tok / bf16:.2f}) |",
                flush=True,
            )
        return 0
    if args.int8_float32:
        print(
            "| rows | float32 ms | int8, per-row scales, ms (/ float32) | int8, one scale per call, ms (/ float32) |\n"
            "|--:|--:|--:|--:|"
        )
        for rows, f32, row, call in int8_against_float32([int(r) for r in args.int8_float32.split(",")]):
            print(
                f"| {rows:.0f} | {f32:.1f} | {row:.1f} ({row / f32:.2f}) | {call:.1f} ({call / f32:.2f}) |", flush=True
            )
        return 0
    if args.cpu_breakdown:
        print("| rows | weights | step ms | linear layers ms | attention ms | rest ms |\n|--:|---|--:|--:|--:|--:|")
        for rows in (int(r) for r in args.cpu_breakdown.split(",")):
            b = cpu_breakdown(rows)
            print(
                f"| {rows} | {b['dtype']} | {b['wall_ms']:.1f} | {b['linear_ms']:.1f} | {b['attention_ms']:.1f} | "
                f"{b['other_ms']:.1f} |",
                flush=True,
            )
        return 0
    device = args.device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    cfg = smollm2_135m_config()
    model = LlamaForCausalLM(cfg).to(device, dtype).eval()
    queued, round_trip = launch_overhead_us(device)
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}), torch "
        f"{torch.__version__}, {dtype}: {queued:.1f} us per queued tiny kernel, {round_trip:.1f} us with a host sync"
    )
    print("| attention | cache | rows | step wall ms | kernels | device busy ms | top op (CPU ms) |")
    print("|---|---|--:|--:|--:|--:|---|")
    choices = {
        "default": contextlib.nullcontext,
        "no-cudnn": lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]),
    }
    for attention in args.attention.split(","):
        for kind in ("DynamicCache", "in place"):
            for rows in (int(r) for r in args.rows.split(",")):
                cache = DynamicCache(config=cfg) if kind == "DynamicCache" else new_cache(cfg)
                with choices[attention]():
                    r = step_profile(model, cache, rows, args.context, device)
                print(
                    f"| {attention} | {kind} | {rows} | {r['wall_ms']:.1f} | {r['kernels']:.0f} | "
                    f"{r['device_busy_ms']:.2f} | {r['top_op']} ({r['top_op_cpu_ms']:.1f}) |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
