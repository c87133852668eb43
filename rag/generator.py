"""The local causal LM that writes answers, with optional per-request LoRA adapters.

Loads any Hugging Face causal LM folder (the bundled SmolLM2-135M-Instruct by default, converted
once from its GGUF), bfloat16 on a GPU or an AMX CPU, else float32, and applies the model's chat template.
Adapters are PEFT LoRA folders under the workspace; each is loaded once and switched per request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from ingest.errors import ModelNotFoundError
from ingest.hardware import cpu_fast_bf16
from rag.config import GeneratorConfig
from rag.models import locate_generator, prepare_generator
from rag.prompts import ABSTAIN_TEXT, chat_messages

logger = logging.getLogger(__name__)


ADAPTER_META = "ragqa_adapter.json"  # written by finetune.adapters next to the PEFT files


class AdapterError(ValueError):
    """An adapter is missing or does not fit the base model."""


def pick_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on a GPU and on a CPU with AMX (hardware bf16 matmuls, prefill ~1.8x
    faster than float32, see :mod:`ingest.hardware`), else float32."""
    if setting == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        return torch.bfloat16 if device.type == "cpu" and cpu_fast_bf16() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[setting]


class Generator:
    """A causal LM + tokenizer. Call :meth:`warm_up` (or use a property) to load it once.

    The model is shared: :meth:`session` holds a lock while an adapter is active, so
    concurrent requests with different adapters never see each other's weights.
    """

    def __init__(self, config: GeneratorConfig, models_dir: Path, adapters_dir: Path | None = None) -> None:
        self.config = config
        self.models_dir = Path(models_dir)
        self.adapters_dir = Path(adapters_dir) if adapters_dir else self.models_dir.parent / "adapters"
        self._model = None
        self._tokenizer = None
        self._eos_ids: list[int] = []
        self._abstention_ids: list[int] = []
        self._loaded_adapters: set[str] = set()
        self._lock = threading.RLock()
        self.name = config.model
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device)
        self.load_seconds = 0.0
        self.int8_layers = 0

    # -- loading ------------------------------------------------------------------------
    def warm_up(self) -> "Generator":
        if self._model is not None:
            return self
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        loc = prepare_generator(self.config, self.models_dir)
        self.name = loc.name
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(loc.path)
            model = AutoModelForCausalLM.from_pretrained(loc.path, dtype=self.dtype)
        except OSError as exc:
            raise ModelNotFoundError(
                f"cannot load the generator {loc.name!r} from {loc.path}: {exc}. Point RAGQA_GENERATOR__MODEL "
                "at a local Hugging Face model folder, or run `ragqa models prepare`."
            ) from exc
        model.to(self.device).eval()
        self.int8_layers = self._maybe_int8_decode(model)
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model = model
        self._eos_ids, self._abstention_ids = self._special_ids(self._tokenizer, model)
        self.load_seconds = time.perf_counter() - t0
        logger.info("loaded generator %s on %s (%s) in %.1f s", self.name, self.device, self.dtype, self.load_seconds)
        return self

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
        if setting == "off" or (setting == "auto" and not on_cpu):
            return 0
        if not on_cpu:
            logger.warning("int8_decode=on needs a bfloat16 or float32 model on the CPU (this one: %s on %s); left off",
                           self.dtype, self.device)
            return 0
        from rag.int8_decode import convert_for_int8_decode

        return convert_for_int8_decode(model)

    # -- prompts ------------------------------------------------------------------------
    def prompt_ids(self, question: str, contexts: Sequence[str], *, one_shot: bool = True) -> list[int]:
        """Token ids of the chat prompt for ``question`` over ``contexts`` (generation prompt added)."""
        messages = chat_messages(question, contexts, one_shot=one_shot)
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return list(ids)
        text = "\n\n".join(m["content"] for m in messages) + "\n\nAnswer:"
        return tok.encode(text)

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
        return self.adapters_dir / name

    def adapter_query_encoder(self, name: str) -> Path | None:
        """The query encoder trained with adapter ``name`` (``ragqa finetune rag --train-query-encoder``), or None."""
        meta_path = self.adapter_path(name) / ADAPTER_META
        if not meta_path.exists():
            return None
        sub = json.loads(meta_path.read_text()).get("query_encoder")
        folder = self.adapter_path(name) / sub if sub else None
        return folder if folder is not None and folder.is_dir() else None

    def list_adapters(self) -> list[str]:
        if not self.adapters_dir.exists():
            return []
        return sorted(p.name for p in self.adapters_dir.iterdir()
                      if (p / "adapter_config.json").exists() and not p.name.startswith("."))

    def _load_adapter(self, name: str) -> None:
        path = self.adapter_path(name)
        if not (path / "adapter_config.json").exists():
            known = ", ".join(self.list_adapters()) or "none"
            raise AdapterError(f"adapter {name!r} not found in {self.adapters_dir} (known: {known})")
        cfg = json.loads((path / "adapter_config.json").read_text())
        meta = json.loads((path / ADAPTER_META).read_text()) if (path / ADAPTER_META).exists() else {}
        if meta.get("kind") == "reward":
            raise AdapterError(f"adapter {name!r} is a reward model (for `ragqa finetune rlhf`), not a generator adapter")
        base = meta.get("base_model")
        if base and base != self.name:
            raise AdapterError(
                f"adapter {name!r} was trained on the generator {base!r}, but the configured generator is "
                f"{self.name!r}; set RAGQA_GENERATOR__MODEL to {base!r} or train a new adapter"
            )
        from peft import PeftModel

        base = cfg.get("base_model_name_or_path")
        if not meta and base and Path(base).name != Path(str(self.name)).name and base != self.config.model:
            logger.warning("adapter %s was trained on %s, the generator is %s", name, base, self.name)
        try:
            if isinstance(self._model, PeftModel):
                self._model.load_adapter(str(path), adapter_name=name)
            else:
                self._model = PeftModel.from_pretrained(self._model, str(path), adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise AdapterError(f"adapter {name!r} does not fit the generator {self.name!r}: {exc}") from exc
        self._model.eval()
        self._loaded_adapters.add(name)

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
