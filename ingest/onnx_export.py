"""Build (once) and cache ONNX versions of a sentence-transformers BERT encoder.

The artefacts live in ``<cache_dir>/onnx/<model-slug>-<key>/`` where the key hashes the model folder
(file names, sizes, mtimes) and the build settings (builder version, opset, onnxruntime version), so a
changed model or a new builder version is rebuilt, never silently reused. ``cache_dir`` is normally the
per-machine user cache (:func:`ingest.workspace.user_cache_dir`), shared by every workspace of the user.
Every file is written to a temporary name and moved into place with ``os.replace``: a crash mid-build
leaves no half-written model behind. Two processes building the same artefact at once take turns on a
file lock in its folder: the second waits and then finds the first one's files (no second export).
A cache folder that cannot be written falls back to ``fallback_dir`` (the workspace's models folder),
with a log line. Nothing is downloaded.

Variants:

- ``fp32``: the transformer exported with the TorchScript exporter of ``torch.onnx`` and fused with
  the ONNX Runtime transformer optimizer (attention, GELU, skip-layer-norm, embed-layer-norm).
- ``int8``: ``fp32`` with its weight matrices dynamically quantised to int8, one scale per output
  channel (``onnxruntime.quantization.quantize_dynamic``), except the few most sensitive ones, which get
  8-bit weights in blocks of 128 with the activations quantised per block too (``MatMulNBits``).

The graph's output is the token embeddings ``(batch, seq, hidden)``; pooling and normalisation are
done by the caller (cheap, and they follow the model's own Pooling settings).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import tempfile
import time
import warnings
from typing import Any, Literal

logger = logging.getLogger(__name__)

Variant = Literal["fp32", "int8"]

#: Bump when the exported graph or the build settings change: old caches are then ignored.
BUILDER_VERSION = 4
#: Block size of the int8 variant's block-quantised matrices (the sensitive ones, see :func:`_sensitive_nodes`).
NBITS_BLOCK = 128
OPSET = 17
#: Largest absolute difference of token embeddings, ONNX fp32 vs torch fp32, accepted after export.
EXPORT_TOLERANCE = 1e-3
#: Model types whose layer stack the exporter knows (embeddings + encoder.layer[i](h, mask)).
SUPPORTED_MODEL_TYPES = frozenset({"bert"})
_MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json")


class OnnxExportError(RuntimeError):
    """The model cannot be converted to ONNX (unsupported architecture, or the export is wrong)."""


def _fsync_replace(tmp: pathlib.Path, dest: pathlib.Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)


def _tmp_path(dest: pathlib.Path) -> pathlib.Path:
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    return pathlib.Path(name)


def model_fingerprint(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies a model folder for the cache: name, size and mtime of its weight/config files."""
    folder = pathlib.Path(model_dir).resolve()
    files = {}
    for name in _MODEL_FILES:
        path = folder / name
        if path.is_file():
            st = path.stat()
            files[name] = [st.st_size, st.st_mtime_ns]
    return {"folder": str(folder), "files": files}


def cache_key(model_dir: str | os.PathLike[str], max_seq_length: int) -> str:
    """A short hex key of the model folder and every setting that changes the built files."""
    import onnxruntime

    payload = {
        "model": model_fingerprint(model_dir),
        "max_seq_length": max_seq_length,
        "builder": BUILDER_VERSION,
        "opset": OPSET,
        "onnxruntime": onnxruntime.__version__,
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def artefact_dir(cache_dir: pathlib.Path, model_dir: str | os.PathLike[str], max_seq_length: int) -> pathlib.Path:
    slug = pathlib.Path(model_dir).resolve().name
    if slug == "model":  # bundled packages keep the weights in <package>/model
        slug = pathlib.Path(model_dir).resolve().parent.name
    return pathlib.Path(cache_dir) / "onnx" / f"{slug}-{cache_key(model_dir, max_seq_length)}"


def onnx_path(folder: pathlib.Path, variant: Variant) -> pathlib.Path:
    return folder / ("model.onnx" if variant == "fp32" else "model-int8.onnx")


def _export_raw(model_dir: str, dest: pathlib.Path, max_seq_length: int) -> tuple[dict[str, Any], Any]:
    """Export the transformer (token embeddings) with the TorchScript-based ``torch.onnx`` exporter.

    The layer stack is called directly with an additive ``(batch, 1, 1, seq)`` mask: the mask helpers
    of transformers 5 hold Python-level branches that tracing would freeze for one padding pattern.
    """
    import torch
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise OnnxExportError(
            f"ONNX export supports model types {sorted(SUPPORTED_MODEL_TYPES)}, not {config.model_type!r}; "
            "use backend 'torch' for this model."
        )
    model = AutoModel.from_pretrained(model_dir, attn_implementation="eager").eval()

    class _Encoder(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert: Any = bert  # a transformers BertModel: embeddings, encoder.layer

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert.embeddings(input_ids=input_ids)
            additive = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
            for layer in self.bert.encoder.layer:
                hidden = layer(hidden, attention_mask=additive)
                if isinstance(hidden, tuple):
                    hidden = hidden[0]
            return hidden

    wrapper = _Encoder(model).eval()
    gen = torch.Generator().manual_seed(0)
    low, high = min(1000, config.vocab_size // 2), min(2000, config.vocab_size)
    ids = torch.randint(low, high, (2, 16), generator=gen)
    mask = torch.ones_like(ids)
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter is deprecated in torch >= 2.9 but still the one that needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (ids, mask),
            str(dest),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["token_embeddings"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                "token_embeddings": {0: "batch", 1: "seq"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
        )
    wrapper.eval()

    # A probe of another shape, with padding: a branch frozen by tracing would show up on it.
    probe_len = min(max_seq_length, 48)
    ids = torch.randint(low, high, (3, probe_len), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, probe_len // 2 :] = 0
    mask[2, 5:] = 0
    with torch.no_grad():
        want = wrapper(ids, mask).numpy()
    feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    _check(dest, feeds, want, "export")
    return feeds, want


def _check(path: pathlib.Path, feeds: dict[str, Any], want: Any, stage: str) -> None:
    """Raise :class:`OnnxExportError` when ``path`` does not reproduce the torch token embeddings."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)[0]
    keep = feeds["attention_mask"].astype(bool)
    err = float(np.abs(got - want)[keep].max())
    if not err <= EXPORT_TOLERANCE:
        raise OnnxExportError(
            f"ONNX {stage} differs from torch by {err:.2e} (> {EXPORT_TOLERANCE}); use backend 'torch' for this model."
        )
    logger.debug("ONNX %s matches torch (max abs diff %.2e)", stage, err)


def _scale_as_div(src: pathlib.Path, dest: pathlib.Path) -> int:
    """Rewrite the attention scaling ``MatMul(q, k) * c`` as ``MatMul(q, k) / (1 / c)``.

    transformers 5 scales the scores with a ``Mul``, and the additive mask is a ``Mul`` too; the ORT
    attention fusion then picks the wrong ``Mul`` on one of its two paths and gives up. With the
    classic ``Div`` form it fuses each layer into one ``Attention`` node (and the embeddings into
    ``EmbedLayerNormalization``). Returns the number of rewritten nodes.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    constants = {node.output[0]: node for node in graph.node if node.op_type == "Constant"}
    count = 0
    for node in graph.node:
        if node.op_type != "Mul" or node.input[1] not in constants:
            continue
        parent = producer.get(node.input[0])
        if parent is None or parent.op_type != "MatMul":
            continue
        value = numpy_helper.to_array(constants[node.input[1]].attribute[0].t)
        if value.size != 1 or not np.issubdtype(value.dtype, np.floating) or value.item() == 0:
            continue
        name = f"{node.name}/inverse_scale"
        graph.initializer.append(numpy_helper.from_array(np.array(1.0 / value, dtype=value.dtype), name))
        node.op_type = "Div"
        node.input[1] = name
        count += 1
    onnx.save(model, str(dest))
    return count


def _optimize(src: pathlib.Path, dest: pathlib.Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Fuse the BERT graph with the ONNX Runtime transformer optimizer (fp32 kept)."""
    from onnxruntime.transformers.optimizer import optimize_model

    canonical = _tmp_path(dest.parent / "canonical.onnx")
    try:
        _scale_as_div(src, canonical)
        optimized = optimize_model(
            str(canonical), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0, use_gpu=False
        )
    finally:
        canonical.unlink(missing_ok=True)
    stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    optimized.save_model_to_file(str(dest))
    return stats


def _sensitive_nodes(path: pathlib.Path) -> list[str]:
    """Nodes kept out of per-tensor dynamic quantisation by the int8 variant (block-quantised instead, see
    :func:`_block_quantize`; fp32 before builder 4): the FFN output projections of the first half of the layers.

    Measured on all-MiniLM-L6-v2 (bench/embedder_speed.py): quantising every MatMul gives cosine 0.993
    to fp32 and loses 1.7 points of SQuAD recall@1; these 3 of 24 weight matrices carry ~40% of that
    error (their inputs, GELU outputs of early layers, have the widest range). Kept in fp32 the
    vectors reach cosine 0.996 and recall@1/@4 equal fp32's, at ~10% of the int8 speed-up.
    """
    import re

    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    pattern = re.compile(r"/layer\.(\d+)/output/dense/MatMul$")
    layers = {int(m.group(1)): node.name for node in graph.node if (m := pattern.search(node.name))}
    return [name for i, name in sorted(layers.items()) if i < (max(layers) + 1) // 2] if layers else []


def _quantize(src: pathlib.Path, dest: pathlib.Path) -> None:
    """Dynamic int8 quantisation: per-channel weight scales, 7-bit range (no u8s8 saturation on AVX2); the
    sensitive matrices (:func:`_sensitive_nodes`) are block-quantised instead (:func:`_block_quantize`)."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    sensitive = _sensitive_nodes(src)
    quantize_dynamic(
        str(src),
        str(dest),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        op_types_to_quantize=["MatMul", "Attention"],
        nodes_to_exclude=sensitive,
        # the fused contrib ops defeat ONNX shape inference; their outputs are float
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
    _block_quantize(dest, sensitive)


def _block_quantize(path: pathlib.Path, names: list[str], block: int = NBITS_BLOCK) -> int:
    """Rewrite the float MatMuls ``names`` of the model at ``path`` (weights in initializers) as ONNX Runtime's
    ``MatMulNBits`` with 8-bit symmetric weights, one scale per ``block`` rows of each output column, and
    ``accuracy_level`` 4 (activations quantised to int8 per block, integer dot products). Returns how many.

    Measured on all-MiniLM-L6-v2 (the three FFN output projections that per-tensor dynamic quantisation
    hurts most, `_sensitive_nodes`): vectors as close to fp32 as with those three left in fp32 (cosine 0.9961
    mean over the Python tutorial's chunks, top-1 neighbour of 400 queries the same 91 % of the time) and
    the whole encoder 7-13 % faster on a 2-core AVX512 EPYC (400 tutorial / 753 docs chunks; int8 MatMulNBits vs
    fp32 MatMul). Speed on AVX2-only CPUs is unmeasured."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    wanted = set(names)
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "MatMul" or node.name not in wanted or node.input[1] not in inits:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)  # (K, N)
        k, n = weight.shape
        blocks = -(-k // block)
        padded = np.zeros((blocks * block, n), np.float32)
        padded[:k] = weight
        by_block = padded.reshape(blocks, block, n).transpose(2, 0, 1)  # (N, blocks, block)
        scale = np.abs(by_block).max(axis=2) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.round(by_block / scale[:, :, None]), -127, 127).astype(np.int16) + 128  # zero point 128
        graph.initializer.remove(inits[node.input[1]])
        q_name, s_name = f"{node.input[1]}_q8", f"{node.input[1]}_scale"
        graph.initializer.extend(
            [
                numpy_helper.from_array(q.astype(np.uint8), q_name),
                numpy_helper.from_array(scale.reshape(-1).astype(np.float32), s_name),
            ]
        )
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], q_name, s_name],
                list(node.output),
                name=f"{node.name}_q8",
                domain="com.microsoft",
                K=k,
                N=n,
                bits=8,
                block_size=block,
                accuracy_level=4,
            )
        )
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))
    return count


class _BuildLock:
    """An exclusive lock on ``folder/.build.lock`` (``fcntl.flock``; released when the process dies).

    Creating it raises OSError when the folder cannot be created or written. Where ``fcntl`` does not
    exist (Windows) there is no lock: two builders then both build, and the atomic renames still leave
    whole files (the last one wins; both built the same model).
    """

    def __init__(self, folder: pathlib.Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._fh = open(folder / ".build.lock", "a+b")  # closed in __exit__

    def __enter__(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        self._fh.close()  # closing releases the lock


def find_onnx(
    model_dir: str | os.PathLike[str], cache_dirs: list[pathlib.Path], variant: Variant, max_seq_length: int
) -> pathlib.Path | None:
    """The first already-built ``variant`` file of ``model_dir`` in ``cache_dirs``, or None."""
    for cache_dir in cache_dirs:
        target = onnx_path(artefact_dir(cache_dir, model_dir, max_seq_length), variant)
        if target.is_file():
            return target
    return None


def build_onnx(
    model_dir: str | os.PathLike[str],
    cache_dir: pathlib.Path,
    variant: Variant = "fp32",
    max_seq_length: int = 256,
    *,
    fallback_dir: pathlib.Path | None = None,
) -> pathlib.Path:
    """Return the cached ONNX file of ``model_dir``, building it (and the fp32 base) when missing.

    A file already built in ``cache_dir`` or ``fallback_dir`` (the workspace's own models folder, where
    older versions built it) is used as it is. A new build goes to ``cache_dir``, or to ``fallback_dir``
    when ``cache_dir`` cannot be written (logged), under a lock that concurrent builders share.

    Raises :class:`OnnxExportError` for an architecture the exporter does not handle.
    """
    model_dir = str(pathlib.Path(model_dir).resolve())
    candidates = [pathlib.Path(d) for d in (cache_dir, fallback_dir) if d is not None]
    found = find_onnx(model_dir, candidates, variant, max_seq_length)
    if found is not None:
        return found
    for i, base in enumerate(candidates):
        folder = artefact_dir(base, model_dir, max_seq_length)
        try:
            lock = _BuildLock(folder)
        except OSError as exc:  # an unwritable cache: build where the workspace can write
            if i + 1 == len(candidates):
                raise
            logger.warning(
                "Embedder cache %s is not writable (%s); building in %s instead", base, exc, candidates[i + 1]
            )
            continue
        with lock:
            return _build_locked(model_dir, folder, variant, max_seq_length)
    raise ValueError("build_onnx needs a cache_dir")


def _build_locked(model_dir: str, folder: pathlib.Path, variant: Variant, max_seq_length: int) -> pathlib.Path:
    """Build ``variant`` in ``folder`` (the caller holds the folder's lock); a file another process built
    while this one waited for the lock is returned as it is."""
    target = onnx_path(folder, variant)
    if target.is_file():
        return target
    start = time.perf_counter()
    fp32 = onnx_path(folder, "fp32")
    meta: dict[str, Any] = {}
    if not fp32.is_file():
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir)
        raw_tmp = _tmp_path(folder / "raw.onnx")
        opt_tmp = _tmp_path(fp32)
        try:
            feeds, want = _export_raw(model_dir, raw_tmp, max_seq_length)
            meta["fused_ops"] = _optimize(raw_tmp, opt_tmp, config.num_attention_heads, config.hidden_size)
            _check(opt_tmp, feeds, want, "optimisation")
            _fsync_replace(opt_tmp, fp32)
        finally:
            raw_tmp.unlink(missing_ok=True)
            opt_tmp.unlink(missing_ok=True)
    if variant == "int8":
        q_tmp = _tmp_path(target)
        try:
            _quantize(fp32, q_tmp)
            _fsync_replace(q_tmp, target)
        finally:
            q_tmp.unlink(missing_ok=True)
    meta.update(
        {
            "model": model_fingerprint(model_dir),
            "max_seq_length": max_seq_length,
            "builder": BUILDER_VERSION,
            "variant": variant,
            "seconds": round(time.perf_counter() - start, 2),
        }
    )
    meta_tmp = _tmp_path(folder / f"meta-{variant}.json")
    meta_tmp.write_text(json.dumps(meta, indent=2))
    _fsync_replace(meta_tmp, folder / f"meta-{variant}.json")
    logger.info("Built ONNX %s model for %s in %.1f s -> %s", variant, model_dir, meta["seconds"], target)
    return target
