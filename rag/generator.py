"""The local causal LM that writes answers, with optional per-request LoRA adapters.

Loads any Hugging Face causal LM folder (the bundled SmolLM2-135M-Instruct by default, converted
once from its GGUF), bfloat16 on a GPU or a CPU with bf16 matmuls (AMX, AVX512-BF16), else float32, and applies
the model's chat template.
Adapters are PEFT LoRA folders under the workspace; each is loaded once and switched per request.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch

from ingest.hardware import cpu_fast_bf16
from rag.adapter_store import AdapterStore
from rag.config import GeneratorConfig
from rag.errors import AdapterError as AdapterError  # re-exported: callers catch it from here
from rag.errors import InvalidAdapterError, ModelNotFoundError
from rag.models import prepare_generator
from rag.prefix_cache import PrefixKVCache, PrefixSpec
from rag.prompts import ABSTAIN_TEXT, PROMPT_TEMPLATE_VERSION, chat_messages, user_message_parts

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"  # the only adapter weights loaded (no pickle)


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a GPU and on a CPU that multiplies bf16 in hardware (AMX: prefill ~1.8x faster
    than float32; AVX512-BF16: generation ~0.5x the seconds; see :mod:`ingest.hardware`), else float32."""
    if setting == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        return torch.bfloat16 if device.type == "cpu" and cpu_fast_bf16() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[setting]


def configure_attention(device: torch.device, config: GeneratorConfig) -> bool:
    """On a CUDA device, keep PyTorch's attention off cuDNN unless ``config.cudnn_attention`` (returns whether
    cuDNN attention was turned off). Newer PyTorch prefers cuDNN attention on Hopper GPUs; it builds a plan per
    sequence length, and generation changes the length at every step, so each call pays a new plan on the CPU
    (an H200 decode step of the 135M model: 66 ms wall for 2.5 ms of GPU work, 44 ms of it in cuDNN attention
    set-up). FlashAttention and the memory-efficient kernels take any length without planning. The switch is
    process-wide (``torch.backends.cuda.enable_cudnn_sdp``): the generator owns the GPU in a ragqa process."""
    if device.type != "cuda" or config.cudnn_attention:
        return False
    if torch.backends.cuda.cudnn_sdp_enabled():
        torch.backends.cuda.enable_cudnn_sdp(False)
        logger.info("cuDNN attention off for generation (generator.cudnn_attention=false): it re-plans per length")
    return True


class Generator:
    """A causal LM + tokenizer. Call :meth:`warm_up` (or use a property) to load it once.

    The model is shared: :meth:`session` holds a lock while an adapter is active, so
    concurrent requests with different adapters never see each other's weights.
    """

    def __init__(self, config: GeneratorConfig, models_dir: Path, adapters_dir: Path | None = None) -> None:
        self.config = config
        self.models_dir = Path(models_dir)
        self.adapters_dir = Path(adapters_dir) if adapters_dir else self.models_dir.parent / "adapters"
        self.adapters = AdapterStore(self.adapters_dir)
        # transformers / peft objects (a causal LM, maybe wrapped in a PeftModel; its tokenizer), typed loosely
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos_ids: list[int] = []
        self._abstention_ids: list[int] = []
        self._loaded_adapters: set[str] = set()
        self._lock = threading.RLock()
        self.name = config.model
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device)
        self.load_seconds = 0.0
        self.int8_layers = 0
        self.prefix_cache = PrefixKVCache(config.prefix_cache_bytes)
        self._adapter_fingerprints: dict[str, tuple[object, str]] = {}  # name -> (its loaded peft config, sha256)
        self._head_lens: dict[tuple[bool, str], int] = {}

    # -- loading ------------------------------------------------------------------------
    def warm_up(self) -> Generator:
        if self._model is not None:
            return self
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        loc = prepare_generator(self.config, self.models_dir)
        self.name = loc.name
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(loc.path)
            model: Any = AutoModelForCausalLM.from_pretrained(loc.path, dtype=self.dtype)
        except OSError as exc:
            raise ModelNotFoundError(
                f"cannot load the generator {loc.name!r} from {loc.path}: {exc}. Point RAGQA_GENERATOR__MODEL "
                "at a local Hugging Face model folder, or run `ragqa models prepare`."
            ) from exc
        model.to(self.device).eval()
        configure_attention(self.device, self.config)
        self.int8_layers = self._maybe_int8_decode(model)
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model = model
        self._eos_ids, self._abstention_ids = self._special_ids(self._tokenizer, model)
        self.load_seconds = time.perf_counter() - t0
        logger.info("loaded generator %s on %s (%s) in %.1f s", self.name, self.device, self.dtype, self.load_seconds)
        self._log_prefix_cache(model)
        return self

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory (asking does not load it)."""
        return self._model is not None

    @property
    def model(self):
        return self.warm_up()._model

    @property
    def tokenizer(self):
        return self.warm_up()._tokenizer

    @property
    def eos_token_ids(self) -> list[int]:
        """Ids that end an answer: the tokenizer's and generation config's eos, and ``<|im_end|>``."""
        return list(self.warm_up()._eos_ids)

    @staticmethod
    def _special_ids(tok, model) -> tuple[list[int], list[int]]:
        """(eos ids, abstention reply ids), computed once at load: ``get_vocab()`` builds a 49k-entry dict."""
        ids = {tok.eos_token_id}
        gen_cfg = getattr(model, "generation_config", None)
        extra = getattr(gen_cfg, "eos_token_id", None)
        if isinstance(extra, int):
            ids.add(extra)
        elif extra:
            ids.update(extra)
        vocab = tok.get_vocab()
        im_end = vocab.get("<|im_end|>")
        if im_end is not None:
            ids.add(im_end)
        eos = sorted(i for i in ids if i is not None)
        end = im_end if im_end is not None else tok.eos_token_id
        idk = list(tok.encode(ABSTAIN_TEXT, add_special_tokens=False)) + ([end] if end is not None else [])
        return eos, idk

    def _maybe_int8_decode(self, model) -> int:
        """int8 decode weights on the CPU, for bf16 (``torch._weight_int8pack_mm``) and float32 models
        (fbgemm's dynamic int8 linear); see :mod:`rag.int8_decode`."""
        setting = self.config.int8_decode
        on_cpu = self.device.type == "cpu" and self.dtype in (torch.bfloat16, torch.float32)
        # auto: bf16 only. float32 'on' (fbgemm's dynamic int8 linear, per-row activation scales, every decode step):
        # 1.1-1.25x the answers/s on a 2-core AVX2 EPYC, but int8 activations turn float32's ~1e-7 batch-shape
        # differences into different roundings, so batched greedy answers equal solo ones 10/32 times, not 32/32
        if setting == "off" or (setting == "auto" and not (on_cpu and self.dtype == torch.bfloat16)):
            return 0
        if not on_cpu:
            logger.warning(
                "int8_decode=on needs a bfloat16 or float32 model on the CPU (this one: %s on %s); left off",
                self.dtype,
                self.device,
            )
            return 0
        from rag.int8_decode import convert_for_int8_decode

        return convert_for_int8_decode(model)

    # -- prompts ------------------------------------------------------------------------
    def prompt_ids(
        self, question: str, contexts: Sequence[str], *, one_shot: bool = True, style: str = "short"
    ) -> list[int]:
        """Token ids of the chat prompt for ``question`` over ``contexts`` (generation prompt added):
        exactly ``prefix_ids + suffix_ids`` of :meth:`prompt_parts`."""
        prefix, suffix = self.prompt_parts(question, contexts, one_shot=one_shot, style=style)
        return prefix + suffix

    def prompt_parts(
        self, question: str, contexts: Sequence[str], *, one_shot: bool = True, style: str = "short"
    ) -> tuple[list[int], list[int]]:
        """The prompt split where the question starts: ``(prefix_ids, suffix_ids)``.

        The prefix (system turn, optional worked example, the user turn up to the end of its context
        blocks) is the same for every question over the same contexts, so its KV state is cacheable
        (:mod:`rag.prefix_cache`); the suffix is the question (after ``"\n\nQuestion:"``) and the assistant header.
        ``style`` chooses the system message (:func:`rag.prompts.system_message`).
        """
        head, context, tail = self._prompt_segments(question, contexts, one_shot, style)
        return head + context, tail

    def _prompt_segments(
        self, question: str, contexts: Sequence[str], one_shot: bool, style: str = "short"
    ) -> tuple[list[int], list[int], list[int]]:
        """``(shared head, context block, question tail)`` token ids, each tokenized on its own.

        The split points are token boundaries of the joint tokenization: the head ends before the
        last user turn's text (after a special token / newline) and the context block ends with
        ``"\n\nQuestion:"`` (:data:`rag.prompts.CONTEXT_END`), before the space that starts the question,
        where a byte-level BPE pre-tokenizer always splits. Measured on the bundled SmolLM2 tokenizer:
        identical to the joint ids for every SQuAD paragraph and question. A template
        that rewrites the user text gets no split (empty head and context).
        """
        tok = self.tokenizer
        context_text, question_text = user_message_parts(question, contexts)
        messages = chat_messages(question, contexts, one_shot=one_shot, style=style)
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            at = text.rfind(context_text + question_text)
            if at < 0:
                return [], [], self._encode(text)
            cut = at + len(context_text)
            return self._encode(text[:at]), self._encode(text[at:cut]), self._encode(text[cut:])
        # no chat template: plain turns, the model's special tokens (BOS) at the very start
        head = "\n\n".join(m["content"] for m in messages[:-1]) + "\n\n"
        head_ids = tok.encode(head)
        return head_ids, self._encode(context_text), self._encode(question_text + "\n\nAnswer:")

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    # -- prompt-prefix KV cache -----------------------------------------------------------
    def cache_namespace(self, adapter: str | None = None) -> tuple:
        """What, besides the prompt's token ids, a cached prefix KV depends on: model, adapter and a
        fingerprint of its loaded weights, dtype, device and prompt template version.

        Call it inside :meth:`session` (the adapter must be loaded). The fingerprint hashes the
        adapter weights held in memory once per load, so an adapter retrained and reloaded under
        the same name gets a new namespace and never hits entries of its old weights.
        """
        fingerprint = self._adapter_fingerprint(adapter) if adapter else None
        return (str(self.name), adapter, fingerprint, str(self.dtype), str(self.device), PROMPT_TEMPLATE_VERSION)

    def prefix_spec(
        self,
        parts: Sequence[tuple[Sequence[int], Sequence[int]]],
        *,
        adapter: str | None = None,
        one_shot: bool = True,
        style: str = "short",
    ) -> PrefixSpec | None:
        """The :class:`PrefixSpec` of prompts given as :meth:`prompt_parts` pairs (built with the same
        ``one_shot`` and ``style``), or None when the cache is off (``GeneratorConfig.prefix_cache_bytes = 0``).
        The system turn (+ example, + user header) is the shared level, cached once for all chunks."""
        if not self.prefix_cache.enabled:
            return None
        shared = self._shared_head_len(one_shot, style)
        lengths = [len(prefix) for prefix, _ in parts]
        return PrefixSpec(self.prefix_cache, self.cache_namespace(adapter), lengths, [min(shared, n) for n in lengths])

    def _shared_head_len(self, one_shot: bool, style: str = "short") -> int:
        """Tokens of the head every prompt starts with (it does not depend on question or contexts)."""
        key = (one_shot, style)
        if key not in self._head_lens:
            self._head_lens[key] = len(self._prompt_segments("?", ["."], one_shot, style)[0])
        return self._head_lens[key]

    def _adapter_fingerprint(self, name: str) -> str:
        """sha256 of adapter ``name``'s weights as loaded in the model, computed once per load
        (a reload creates a new adapter config object, which renews the fingerprint)."""
        model = self.warm_up()._model
        config = getattr(model, "peft_config", {}).get(name)
        if config is None:
            raise ValueError(
                f"adapter {name!r} is not loaded: call cache_namespace inside Generator.session({name!r})."
            )
        known = self._adapter_fingerprints.get(name)
        if known is not None and known[0] is config:
            return known[1]
        from peft import get_peft_model_state_dict

        digest = hashlib.sha256()
        state = get_peft_model_state_dict(model, adapter_name=name)
        for key in sorted(state):
            tensor = state[key].detach().cpu().contiguous()
            digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
        self._adapter_fingerprints[name] = (config, digest.hexdigest())
        return digest.hexdigest()

    def _log_prefix_cache(self, model) -> None:
        cfg = model.config
        layers = getattr(cfg, "num_hidden_layers", 0)
        heads = cast(int, getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", 0))
        head_dim = cast(
            int, getattr(cfg, "head_dim", None) or cfg.hidden_size // max(1, getattr(cfg, "num_attention_heads", 1))
        )
        per_token = 2 * layers * heads * head_dim * torch.empty((), dtype=self.dtype).element_size()
        if not self.prefix_cache.enabled:
            logger.info("prompt-prefix KV cache off (prefix_cache_bytes=0)")
            return
        logger.info(
            "prompt-prefix KV cache: budget %.0f MiB, %.1f KiB per token (~%.1f MiB per 265-token chunk prompt, "
            "~%d such entries)",
            self.prefix_cache.max_bytes / 2**20,
            per_token / 1024,
            265 * per_token / 2**20,
            self.prefix_cache.max_bytes // max(1, 265 * per_token),
        )

    @property
    def abstention_ids(self) -> list[int]:
        """The reply "I don't know." as the model would write it: its tokens, then end-of-turn."""
        return list(self.warm_up()._abstention_ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without end-of-turn / special tokens (called once per decoded token: keep it cheap)."""
        eos = self.warm_up()._eos_ids
        return self._tokenizer.decode([i for i in ids if i not in eos], skip_special_tokens=True).strip()

    # -- adapters -----------------------------------------------------------------------
    def adapter_path(self, name: str) -> Path:
        return self.adapters.path(name)

    def adapter_query_encoder(self, name: str) -> Path | None:
        """The query encoder trained with adapter ``name`` (``ragqa finetune rag --train-query-encoder``), or None."""
        return self.adapters.query_encoder(name)

    def list_adapters(self) -> list[str]:
        return self.adapters.names()

    def use_model(self, model: torch.nn.Module) -> None:
        """Run prompts and decoding on ``model`` from now on (e.g. this generator's weights with an
        adapter merged in, as a fine-tune run's starting policy). Loads the tokenizer first."""
        self.warm_up()
        with self._lock:
            self._model = model

    def _load_adapter(self, name: str) -> None:
        """Load adapter ``name`` (a registry name, resolved inside the adapters folder) into the shared model.

        Checked before the model is touched: a LoRA ``adapter_config.json`` and safetensors weights (never a
        pickle). A load that still fails leaves the model exactly as it was (:class:`_ModelSnapshot`): other
        tenants' answers never change because of someone's broken adapter."""
        path = self.adapters.validate_for_generator(name, self.name)
        self._check_adapter_files(name, path)
        from peft import PeftModel

        meta = self.adapters.meta(name)
        base = self.adapters.peft_config(name).get("base_model_name_or_path")
        if not meta and base and Path(base).name != Path(str(self.name)).name and base != self.config.model:
            logger.warning("adapter %s was trained on %s, the generator is %s", name, base, self.name)
        snapshot = _ModelSnapshot.take(self._model)
        try:
            if isinstance(self._model, PeftModel):
                self._model.load_adapter(str(path), adapter_name=name)
                model = self._model
            else:
                model = PeftModel.from_pretrained(self._model, str(path), adapter_name=name)
        except Exception as exc:
            self._undo_failed_load(snapshot, name)
            if isinstance(exc, (RuntimeError, ValueError, KeyError, TypeError, AttributeError, OSError)):
                raise InvalidAdapterError(f"adapter {name!r} does not fit the generator {self.name!r}: {exc}") from exc
            raise
        self._model = model
        self._model.eval()
        self._loaded_adapters.add(name)

    def _check_adapter_files(self, name: str, path: Path) -> None:
        """Refuse, before loading anything, an adapter that is not a LoRA adapter with safetensors weights."""
        peft_type = str(self.adapters.peft_config(name).get("peft_type") or "")
        if peft_type.upper() != "LORA":
            raise InvalidAdapterError(
                f"adapter {name!r} is not a LoRA adapter (adapter_config.json peft_type {peft_type or 'missing'!r}); "
                "ragqa serves LoRA adapters trained with `ragqa finetune`"
            )
        if not (path / ADAPTER_WEIGHTS).is_file():
            raise InvalidAdapterError(
                f"adapter {name!r} has no {ADAPTER_WEIGHTS} (pickled adapter_model.bin files are not loaded); "
                "save it again with safetensors or retrain it with `ragqa finetune`"
            )

    def _undo_failed_load(self, snapshot: _ModelSnapshot, name: str) -> None:
        """Put the model back as it was before a failed load of adapter ``name``; reload it from disk when the
        undo cannot be verified."""
        try:
            snapshot.restore(name)
            if snapshot.matches():
                return
            logger.error("a failed load of adapter %s left the model changed; reloading the generator", name)
        except Exception:
            logger.exception("could not undo the failed load of adapter %s; reloading the generator", name)
        self._model = None
        self._loaded_adapters.clear()
        self._adapter_fingerprints.clear()
        self.warm_up()

    @contextmanager
    def session(self, adapter: str | None = None) -> Iterator[torch.nn.Module]:
        """The model with ``adapter`` active (or no adapter), locked for the caller's use."""
        self.warm_up()
        with self._lock:
            from peft import PeftModel

            if adapter:
                if adapter not in self._loaded_adapters:
                    self._load_adapter(adapter)
                self._model.set_adapter(adapter)
                yield self._model
            elif isinstance(self._model, PeftModel):
                with self._model.disable_adapter():
                    yield self._model
            else:
                yield self._model


class _ModelSnapshot:
    """The structure of a model before an adapter load, to undo a failed one exactly.

    PEFT injects an adapter in place (LoRA wrappers replace the target layers, parameters are added to
    existing wrappers, ``peft_config`` and config fields are set) before it reads the weights, so a load
    that fails half-way leaves the shared model altered. :meth:`restore` puts back every original submodule
    and removes every added child, parameter, buffer and attribute; weights are never copied (a failed load
    does not write into the base weights)."""

    HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")

    def __init__(self, model: torch.nn.Module) -> None:
        self.model: Any = model
        self.modules = dict(model.named_modules(remove_duplicate=False))
        self.hooks = {p: {h: set(getattr(m, h, {})) for h in self.HOOKS} for p, m in self.modules.items()}
        self.children = {p: list(m._modules) for p, m in self.modules.items()}
        self.params = {p: list(m._parameters) for p, m in self.modules.items()}
        self.buffers = {p: list(m._buffers) for p, m in self.modules.items()}
        self.attrs = {p: set(vars(m)) for p, m in self.modules.items()}
        self.requires_grad = [(t, t.requires_grad) for t in model.parameters()]
        config = getattr(model, "config", None)
        self.config = dict(vars(config)) if config is not None else None
        peft_config = getattr(model, "peft_config", None)
        self.adapters = set(peft_config) if isinstance(peft_config, dict) else None
        self.signature = self._signature(model)

    @classmethod
    def take(cls, model: torch.nn.Module) -> _ModelSnapshot:
        return cls(model)

    @staticmethod
    def _signature(model: torch.nn.Module) -> list[tuple[str, str, int]]:
        return [(p, type(m).__name__, id(m)) for p, m in model.named_modules(remove_duplicate=False)] + [
            (p, "param", id(t)) for p, t in model.named_parameters(remove_duplicate=False)
        ]

    def restore(self, adapter: str) -> None:
        model = self.model
        peft_config: Any = getattr(model, "peft_config", None)
        added = isinstance(peft_config, dict) and adapter in peft_config
        if self.adapters is not None and added and adapter not in self.adapters:
            try:
                model.delete_adapter(adapter)  # PEFT's own clean-up of the layers
            except Exception as exc:
                logger.warning("PEFT could not delete the half-loaded adapter %s: %s", adapter, exc)
                peft_config.pop(adapter, None)
        for path, module in self.modules.items():  # pre-order: parents are put back before their children
            keep = self.children[path]
            for child in list(module._modules):
                if child not in keep:
                    del module._modules[child]
            for child in keep:
                original = self.modules[f"{path}.{child}" if path else child]
                if module._modules.get(child) is not original:
                    module._modules[child] = original
            _drop_new_keys(module._parameters, self.params[path])
            _drop_new_keys(module._buffers, self.buffers[path])
            for attr in [a for a in vars(module) if a not in self.attrs[path]]:
                delattr(module, attr)
            for hook, kept in self.hooks[path].items():  # e.g. an input-embedding hook of a prompt-learning adapter
                hooks: Any = getattr(module, hook, None) or {}
                for handle in [h for h in hooks if h not in kept]:
                    del hooks[handle]
        for tensor, flag in self.requires_grad:
            tensor.requires_grad_(flag)
        config = getattr(model, "config", None)
        if config is not None and self.config is not None:
            for key in [k for k in vars(config) if k not in self.config]:
                delattr(config, key)
            for key, value in self.config.items():
                if vars(config).get(key, object()) is not value:
                    setattr(config, key, value)

    def matches(self) -> bool:
        """Whether the model has exactly the modules and parameters it had when the snapshot was taken."""
        return self._signature(self.model) == self.signature


def _drop_new_keys(store: dict[str, Any], keep: list[str]) -> None:
    for key in [k for k in store if k not in keep]:
        del store[key]
