"""Reading PowerPolicy manifests: files, directories (recursively) or stdin, multi-document.

Pure apart from reading files: every document keeps where it came from (``file:index``), so a
message can name it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Document", "ManifestError", "load_policy", "read_documents"]

STDIN = "-"
MANIFEST_SUFFIXES = (".yaml", ".yml")


class ManifestError(Exception):
    """A manifest could not be read (missing file, not YAML): nothing was validated."""


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document and where it came from."""

    source: str  # a path, or "-" for stdin
    index: int  # position within its file, from 0
    data: Any

    @property
    def where(self) -> str:
        return f"{self.source}:{self.index}"

    @property
    def title(self) -> str:
        """``file:index kind/name`` (as much of it as the document has)."""
        if isinstance(self.data, dict):
            kind = self.data.get("kind") or "?"
            meta = self.data.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            return f"{self.where} {kind}/{name or '?'}"
        return self.where


def _files(target: str) -> list[Path]:
    path = Path(target)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix in MANIFEST_SUFFIXES and p.is_file())
        if not found:
            raise ManifestError(f"{target}: no *.yaml or *.yml files in this directory")
        return found
    if not path.exists():
        raise ManifestError(f"{target}: no such file or directory")
    return [path]


def _parse(text: str, source: str) -> Iterator[Document]:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: not valid YAML: {exc}") from exc
    for index, data in enumerate(docs):
        if data is not None:  # an empty document (a trailing ---) is not a manifest
            yield Document(source, index, data)


def read_documents(targets: Sequence[str]) -> list[Document]:
    """Every document of every target (a file, a directory, or ``-`` for stdin)."""
    out: list[Document] = []
    for target in targets:
        if target == STDIN:
            out.extend(_parse(sys.stdin.read(), STDIN))
            continue
        for path in _files(target):
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ManifestError(f"{path}: {exc}") from exc
            out.extend(_parse(text, str(path)))
    return out


def load_policy(target: str, name: str | None = None) -> Document:
    """The one PowerPolicy document of `target` (or the one called `name`)."""
    docs = [
        d
        for d in read_documents([target])
        if isinstance(d.data, dict) and d.data.get("kind") == "PowerPolicy"
    ]
    if name is not None:
        docs = [d for d in docs if (d.data.get("metadata") or {}).get("name") == name]
    if len(docs) != 1:
        which = f" named {name!r}" if name else ""
        found = ", ".join(d.title for d in docs) or "none"
        raise ManifestError(
            f"{target}: expected one PowerPolicy{which}, found {len(docs)} ({found}); "
            "pick one with --name"
        )
    return docs[0]
