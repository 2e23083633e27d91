"""Full-text search terms for Chinese and English text.

Chinese has no spaces, so word-based tsvector search does not serve it; we match every term as a
case-insensitive substring, served by the trigram GIN index. Terms are LIKE-escaped: a user's
``%`` or ``_`` is searched for literally (the reference passed them through unescaped).
"""

from __future__ import annotations

import re

from server.storage.errors import InvalidInput

MAX_TERMS = 8
MAX_TERM_CHARS = 100


def parse_terms(text: str) -> list[str]:
    """Split a search box's text into distinct terms; quotes keep a phrase together."""
    if not isinstance(text, str):
        raise InvalidInput("search text must be a string")
    terms: list[str] = []
    for quoted, bare in re.findall(r'"([^"]+)"|(\S+)', text):
        term = (quoted or bare).strip()
        if term and term.casefold() not in (t.casefold() for t in terms):
            terms.append(term[:MAX_TERM_CHARS])
    if not terms:
        raise InvalidInput("search text is empty")
    if len(terms) > MAX_TERMS:
        raise InvalidInput(f"at most {MAX_TERMS} search terms are allowed, got {len(terms)}")
    if any("\x00" in t for t in terms):
        raise InvalidInput("search text contains a NUL character")
    return terms


def like_pattern(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def match_spans(content: str, terms: list[str]) -> list[tuple[int, int]]:
    """Character ranges of every occurrence of every term (case-insensitive), merged and sorted."""
    spans: list[tuple[int, int]] = []
    lowered = content.lower()
    for term in terms:
        needle = term.lower()
        start = lowered.find(needle)
        while start >= 0:
            spans.append((start, start + len(needle)))
            start = lowered.find(needle, start + len(needle))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for begin, end in spans:
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((begin, end))
    return merged
