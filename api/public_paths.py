"""What the API shows of server-side paths: never the server's folders, only names.

The store keeps a document's ``source`` as the absolute path it was read from (the CLI shows it as it
is). Over HTTP an uploaded file is shown by its upload name (``q3 report.txt``), a file ingested from
elsewhere on the server by its file name, and a URL as it is. Error messages and job entries have the
workspace's folders taken out the same way. :class:`PublicPaths` is applied by the service to every
document, citation, job and error it returns. A model configured as a folder is shown by its name
(:func:`model_name`: the folder's last part) in ``/healthz``, answers and collections; the full path
stays in the server's log and the admin CLI (``ragqa models``). Nested metadata (an adapter's
``ragqa_adapter.json``: training data, held-out split, base model folder, recipe) goes through
:meth:`PublicPaths.tree`: every path in it, at any depth, is shown by its last part.
"""

from __future__ import annotations

import contextlib
import ntpath
import posixpath
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_WINDOWS_ABS = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")
# an absolute or home-relative POSIX path inside free text (a recipe's YAML, a message): not part of a URL,
# a relative path or a word; its last part is kept
_EMBEDDED_PATH = re.compile(r"(?<![\w.:/~-])~?/(?:[^/\s'\"`]+/)+")


def _roots(paths: Iterable[Path]) -> list[str]:
    """Each path as given and resolved, longest first (so the most specific prefix wins), without duplicates."""
    out: set[str] = set()
    for p in paths:
        p = Path(p).expanduser()
        out.add(str(p).rstrip("/\\"))
        with contextlib.suppress(OSError):
            out.add(str(p.resolve()).rstrip("/\\"))
    return sorted((r for r in out if r), key=len, reverse=True)


class PublicPaths:
    """Maps server paths to what a client may see.

    ``uploads``: the uploads folder (``<home>/uploads``, one sub-folder per collection); ``private``: other
    folders whose paths must not leave the server (the workspace home, at least).
    """

    def __init__(self, uploads: Path, private: Iterable[Path] = ()) -> None:
        self.uploads = _roots([uploads])
        self.private = _roots(private)
        # <uploads>/<collection>/[.jobs/<id>/] -> "" (the upload name stays); any other private path -> its last part
        upload_alts = "|".join(re.escape(r) for r in self.uploads)
        private_alts = "|".join(re.escape(r) for r in self.private)
        part = r"[^/\\\s'\"]+[/\\]"  # one folder: <collection>/, or a staging .jobs/<job_id>/
        self._upload_prefix = (
            re.compile(rf"(?:{upload_alts})[/\\]{part}(?:\.jobs[/\\]{part})?") if upload_alts else None
        )
        self._private_path = (
            re.compile(rf"(?:{private_alts})(?![\w.-])(?:[/\\][^/\\\s'\"]*)*") if private_alts else None
        )

    def source(self, source: str) -> str:
        """A document's source as the API shows it: upload name, file name, or the URL / relative name as stored."""
        if not source or "://" in source:
            return source
        for root in self.uploads:
            if source.startswith(root) and source[len(root) : len(root) + 1] in ("/", "\\"):
                rest = source[len(root) + 1 :]
                parts = re.split(r"[/\\]", rest, maxsplit=1)
                return parts[-1] if len(parts) == 2 else rest
        if posixpath.isabs(source):
            return posixpath.basename(source.rstrip("/")) or source
        if _WINDOWS_ABS.match(source):
            return ntpath.basename(source.rstrip("\\/")) or source
        return source

    def text(self, text: str | None) -> str | None:
        """A message with the server's folders taken out (upload paths become upload names)."""
        if not text:
            return text
        if self._upload_prefix is not None:
            text = self._upload_prefix.sub("", text)
        if self._private_path is not None:
            roots = set(self.private)
            text = self._private_path.sub(
                lambda m: "<workspace>" if m.group(0).rstrip("/\\") in roots else _last_part(m.group(0)), text
            )
        return text

    def metadata(self, metadata: dict[str, Any] | None) -> dict[str, Any]:
        """Chunk / document metadata with its ``source`` (and any path-like string value) made public."""
        out = dict(metadata or {})
        if isinstance(out.get("source"), str):
            out["source"] = self.source(out["source"])
        for k, v in out.items():
            if k != "source" and isinstance(v, str):
                out[k] = self.text(v)
        return out

    def tree(self, value: Any) -> Any:
        """``value`` (JSON-like: dicts, lists, strings, numbers) with every path in its strings made public, at any
        depth: a string that is a path (``/srv/data/train.jsonl``, ``~/x``, ``C:\\x``) becomes its last part, a path
        inside text loses its folders, the workspace's folders become ``<workspace>``. Names, hub ids
        (``org/model``), URLs and relative names stay as they are. Keys are kept."""
        if isinstance(value, dict):
            return {k: self.tree(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.tree(v) for v in value]
        if not isinstance(value, str) or not value:
            return value
        if not any(ch.isspace() for ch in value):  # one token: a URL, a name, or a path
            if "://" in value:
                return value
            shown = model_name(value)
            if shown != value:
                return shown
        return _EMBEDDED_PATH.sub("", self.text(value) or value)


def model_name(model: str) -> str:
    """A model as the API shows it: a name or hub id (``SmolLM2-135M-Instruct``,
    ``sentence-transformers/all-MiniLM-L6-v2``) as it is, a local folder or file by its last part."""
    text = model.rstrip("/\\")
    if (
        posixpath.isabs(text)
        or _WINDOWS_ABS.match(text)
        or text.startswith(("~", "./", "../", ".\\", "..\\"))
        or text.count("/") > 1
        or "\\" in text
    ):
        return _last_part(text or model)
    return model


def _last_part(path: str) -> str:
    name = re.split(r"[/\\]", path.rstrip("/\\"))[-1]
    return name or "<workspace>"
