"""Grouping answer tokens into words (subword tokenizers split words into several tokens)."""

from __future__ import annotations

import re
from typing import Sequence

_SPACE = (" ", "\u2581", "\u0120", "\t", "\n")  # plain, SentencePiece and byte-level BPE word starts


def normalize(word: str) -> str:
    """Lower case without surrounding punctuation or word-start markers."""
    return re.sub(r"^[^\w']+|[^\w']+$", "", word.replace("\u2581", " ").replace("\u0120", " ").strip().lower())


def group_words(texts: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Group answer tokens into words: ``(normalised word, token indices)``.

    With a subword tokenizer a token that starts with a space (or a
    SentencePiece / byte-level word-start marker) opens a new word; with a
    word-level tokenizer (no token carries such a marker) every token is a
    word.  Punctuation-only tokens close the current word and are dropped.
    """
    marked = any(t[:1] in _SPACE for t in texts[1:] if t)
    words: list[tuple[str, list[int]]] = []
    current, idx = "", []
    for i, text in enumerate(texts):
        starts = (not marked) or text[:1] in _SPACE or not current
        if not normalize(text):  # empty or punctuation-only
            if current:
                words.append((normalize(current), idx))
            current, idx = "", []
            continue
        if starts and current:
            words.append((normalize(current), idx))
            current, idx = "", []
        current += text
        idx.append(i)
    if current:
        words.append((normalize(current), idx))
    return [(w, ix) for w, ix in words if w]


def find_word(texts: Sequence[str], word: str) -> list[list[int]]:
    """Token indices of every occurrence of ``word``: a single token with that text, else a grouped word."""
    wanted = word.strip().lower()
    single = [[i] for i, t in enumerate(texts) if t.strip().lower() == wanted]
    if single:
        return single
    return [idx for w, idx in group_words(texts) if w == normalize(word)]
