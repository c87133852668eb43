"""Training files: JSON Lines readers and validators for SFT, preference and prompt data.

Formats (one JSON object per line; blank lines and lines starting with ``#`` are ignored):

- SFT: ``{"question": str, "answer": str}`` plus optional ``"context": str`` or ``"contexts": [str]``.
- Preferences: ``{"question": str, "chosen": str, "rejected": str}`` plus optional context(s).
- Prompts (online RL, on-policy preferences): ``{"question": str}`` plus optional context(s) and an
  optional gold ``"answer"`` (the verifier's reference).

Every malformed line is reported with its line number; nothing is silently dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.errors import DataError


@dataclass
class Example:
    """One training record. ``contexts`` is empty when the file gives none (then a collection may supply them)."""

    question: str
    answer: str | None = None
    contexts: list[str] = field(default_factory=list)
    chosen: str | None = None
    rejected: str | None = None
    line: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"question": self.question}
        for key in ("answer", "chosen", "rejected"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.contexts:
            out["contexts"] = list(self.contexts)
        return out


REQUIRED = {"sft": ("question", "answer"), "preference": ("question", "chosen", "rejected"), "prompt": ("question",)}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _contexts(obj: dict[str, Any], where: str) -> list[str]:
    if "contexts" in obj:
        ctx = obj["contexts"]
        if not isinstance(ctx, list) or not all(isinstance(c, str) for c in ctx):
            raise DataError(f"{where}: 'contexts' must be a list of strings")
        return [c for c in ctx if c.strip()]
    if "context" in obj:
        if not isinstance(obj["context"], str):
            raise DataError(f"{where}: 'context' must be a string")
        return [obj["context"]] if obj["context"].strip() else []
    return []


def _answer(obj: dict[str, Any]) -> str | None:
    value = obj.get("answer")
    return value if isinstance(value, str) and value.strip() else None


def parse_records(lines: Iterable[str], kind: str, source: str = "<data>") -> tuple[list[Example], list[str]]:
    """Parse JSONL ``lines`` of ``kind`` ('sft', 'preference', 'prompt'): (examples, per-line errors)."""
    if kind not in REQUIRED:
        raise ValueError(f"unknown data kind {kind!r}")
    examples: list[Example] = []
    errors: list[str] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{source}:{number}"
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            errors.append(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(obj, dict):
            errors.append(f"{where}: expected a JSON object, got {type(obj).__name__}")
            continue
        missing = [k for k in REQUIRED[kind] if not (isinstance(v := obj.get(k), str) and v.strip())]
        if missing:
            errors.append(f"{where}: missing or empty field(s) {', '.join(missing)} (need {', '.join(REQUIRED[kind])})")
            continue
        try:
            contexts = _contexts(obj, where)
        except DataError as exc:
            errors.append(str(exc))
            continue
        examples.append(
            Example(
                question=obj["question"].strip(),
                # prompts keep an optional gold answer: the verifiable reward and the ptx loss read it
                answer=_answer(obj) if kind in ("sft", "prompt") else None,
                contexts=contexts,
                chosen=obj.get("chosen") if kind == "preference" else None,
                rejected=obj.get("rejected") if kind == "preference" else None,
                line=number,
            )
        )
    return examples, errors


def read_jsonl(path: str | Path, kind: str, *, min_examples: int = 2, strict: bool = True) -> list[Example]:
    """Read and validate a training file. Raises :class:`DataError` naming every bad line (``strict``)
    or when fewer than ``min_examples`` valid records remain."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"training file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc}); save it as UTF-8 JSON Lines") from exc
    examples, errors = parse_records(lines, kind, source=str(path))
    if errors and strict:
        shown = "\n  ".join(errors[:20]) + (f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else "")
        raise DataError(f"{len(errors)} malformed line(s) in {path}:\n  {shown}")
    if len(examples) < min_examples:
        raise DataError(
            f"{path} has {len(examples)} usable {kind} record(s); at least {min_examples} are needed "
            f"(fields: {', '.join(REQUIRED[kind])})"
        )
    return examples


def write_jsonl(path: str | Path, records: Sequence[dict[str, Any] | Example]) -> int:
    """Write records as JSON Lines atomically (temp file + rename). Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            obj = rec.to_json() if isinstance(rec, Example) else rec
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return len(records)
