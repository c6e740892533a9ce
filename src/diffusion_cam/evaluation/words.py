"""Answer words: grouping tokens into words, function words, and matching words to object names."""

from __future__ import annotations

from typing import Iterable, Sequence

from ..words import group_words, normalize  # noqa: F401  (group_words is part of this module's interface)

#: Closed-class words TAM counts as function words (its NLTK tags CC, DT, EX, MD,
#: POS, PRP, PRP$, UH, WDT, WP, WP$, WRB), as a fixed list so no tagger is needed.
FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every no another both either neither all
and or but nor yet so
there
can could may might must shall should will would
's '
i you he she it we they me him her us them myself yourself himself herself itself ourselves themselves
my your his its our their mine yours hers ours theirs
oh uh um wow yes
which what who whom whose where when why how whatever whichever whoever
""".split())

_IRREGULAR = {"people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
              "teeth": "tooth", "feet": "foot", "geese": "goose", "oxen": "ox", "knives": "knife",
              "leaves": "leaf", "shelves": "shelf", "calves": "calf", "skis": "ski"}


def singular_forms(word: str) -> list[str]:
    """``word`` and plausible singular forms of it, most likely first."""
    w = word.lower()
    out = [w]
    if w in _IRREGULAR:
        out.append(_IRREGULAR[w])
    if w.endswith("ies") and len(w) > 4:
        out.append(w[:-3] + "y")
    if w.endswith(("ches", "shes", "ses", "xes", "zes", "oes")):
        out.append(w[:-2])
    if w.endswith("s") and not w.endswith("ss") and len(w) > 3:
        out.append(w[:-1])
    return list(dict.fromkeys(out))


def match_names(words: Sequence[str], vocabulary: dict[str, str], max_len: int = 3) -> list[str | None]:
    """The name each word belongs to, matching multi-word names first (``"traffic light"``).

    ``vocabulary`` maps a (singular, lower-case) phrase of one to ``max_len``
    words to a name.  A matched phrase assigns its name to all its words.
    """
    out: list[str | None] = [None] * len(words)
    i = 0
    while i < len(words):
        for n in range(min(max_len, len(words) - i), 0, -1):
            span = words[i:i + n]
            if n > 1 and any(not w for w in span):
                continue
            # singularise only the last word of a phrase ("traffic lights")
            hit = next((vocabulary[" ".join([*span[:-1], last])] for last in singular_forms(span[-1])
                        if " ".join([*span[:-1], last]) in vocabulary), None)
            if hit is not None:
                out[i:i + n] = [hit] * n
                i += n
                break
        else:
            i += 1
    return out


#: prepositions and auxiliaries: not function words for TAM, but they name nothing either
_NOT_CONTENT = frozenset("""
in on at of with to from by for near next behind under above over front top side into onto up down out off
around through across along between beside among against inside outside is are was were be been being has have
had do does did while as than
""".split())


def content_words(phrase: str) -> list[str]:
    """The words of a grounding phrase that can name its object (no function words, prepositions, auxiliaries)."""
    return [w for w in (normalize(t) for t in phrase.split()) if w and w not in FUNCTION_WORDS and w not in _NOT_CONTENT]


def merge_runs(labels: Iterable[object]) -> list[tuple[object, list[int]]]:
    """Consecutive equal non-None labels as ``(label, positions)`` runs (TAM merges such words)."""
    runs: list[tuple[object, list[int]]] = []
    for i, label in enumerate(labels):
        if label is None:
            continue
        if runs and runs[-1][0] == label and runs[-1][1][-1] == i - 1:
            runs[-1][1].append(i)
        else:
            runs.append((label, [i]))
    return runs
