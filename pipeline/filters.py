"""Filters: one small tree that every store translates into its own query language.

A search narrows the library with labels ("Cat with at least 80 % confidence"), metadata
("source is scikit-image") and excluded ids. The core builds that as a tree of a few node
types; the embedded store turns it into a LanceDB SQL predicate, the cluster stores into a
``bool`` query. ``matches`` evaluates the same tree on a document in Python: the reference the
stores are tested against, and what the embedded store uses where SQL cannot look (inside the
list of label structs).

Node types, and nothing else:

* ``Term(field, values)``: the field holds one of ``values`` (keyword fields, and
  ``metadata.KEY`` for a metadata column);
* ``Range(field, gte=..., lte=...)``: a numeric or date field within bounds;
* ``HasLabel(name, min_confidence)``: a label of that name (case-insensitive) with at least
  that confidence;
* ``And(items)``, ``Or(items)``, ``Not(item)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.document import AssetDocument, Label

METADATA_PREFIX = "metadata."


@dataclass(frozen=True)
class Term:
    """``field`` holds one of ``values``."""

    field: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Range:
    """``field`` lies within the given bounds (each optional, inclusive or strict)."""

    field: str
    gte: float | datetime | None = None
    gt: float | datetime | None = None
    lte: float | datetime | None = None
    lt: float | datetime | None = None


@dataclass(frozen=True)
class HasLabel:
    """A label named ``name`` (case-insensitive) with ``confidence >= min_confidence``."""

    name: str
    min_confidence: float = 0.0

    def matches(self, labels: Sequence[Label]) -> bool:
        key = self.name.casefold()
        return any(
            lab.name.casefold() == key and lab.confidence >= self.min_confidence for lab in labels
        )


@dataclass(frozen=True)
class And:
    items: tuple[Filter, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    item: Filter


Filter = Term | Range | HasLabel | And | Or | Not


def all_of(items: Sequence[Filter]) -> Filter | None:
    """The conjunction of ``items``: ``None`` (no filter) for none, the item itself for one."""
    if not items:
        return None
    return items[0] if len(items) == 1 else And(tuple(items))


def any_of(items: Sequence[Filter]) -> Filter | None:
    """The disjunction of ``items``: ``None`` (no filter) for none, the item itself for one."""
    if not items:
        return None
    return items[0] if len(items) == 1 else Or(tuple(items))


def matches(node: Filter | None, doc: AssetDocument) -> bool:
    """Whether ``doc`` passes ``node`` (``None``: no filter, everything passes)."""
    match node:
        case None:
            return True
        case Term(field, values):
            return any(value in values for value in field_values(doc, field))
        case Range(field, gte, gt, lte, lt):
            return any(
                (gte is None or v >= gte)
                and (gt is None or v > gt)
                and (lte is None or v <= lte)
                and (lt is None or v < lt)
                for v in field_values(doc, field)
            )
        case HasLabel():
            return node.matches(doc.labels)
        case And(items):
            return all(matches(item, doc) for item in items)
        case Or(items):
            return any(matches(item, doc) for item in items)
        case Not(item):
            return not matches(item, doc)
    raise TypeError(f"not a filter node: {node!r}")


def field_values(doc: AssetDocument, field: str) -> list[Any]:
    """The values a filter on ``field`` sees: one for a scalar, each item of a list, nothing
    for a missing metadata key."""
    if field.startswith(METADATA_PREFIX):
        value = doc.metadata.get(field.removeprefix(METADATA_PREFIX))
        return [] if value is None else [value]
    value = getattr(doc, field)
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def walk(node: Filter | None) -> Iterator[Filter]:
    """Every node of the tree, parents first."""
    if node is None:
        return
    yield node
    match node:
        case And(items) | Or(items):
            for item in items:
                yield from walk(item)
        case Not(item):
            yield from walk(item)


_QUOTED = re.compile(r'"([^"]*)"')
_WORD = re.compile(r"\w+")


def text_terms(text: str) -> tuple[list[str], list[str]]:
    """A full-text query as words and "double-quoted phrases", lower-cased; everything else a
    query language might read as syntax (``AND``, ``+``, ``:``, a lone quote) is dropped, so
    every store reads the same query and no text is a syntax error."""
    phrases = [" ".join(_WORD.findall(p.lower())) for p in _QUOTED.findall(text)]
    words = _WORD.findall(_QUOTED.sub(" ", text).lower())
    return words, [p for p in phrases if p]
