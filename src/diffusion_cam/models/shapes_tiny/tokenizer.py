"""Word-level tokenizer over the shapes-world vocabulary."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from ...datasets.shapes import WORDS

__all__ = ["SPECIAL_TOKENS", "ShapesTokenizer"]

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<mask>", "<image>", "<sep>")


class ShapesTokenizer:
    """Maps the contract's words (and a few special tokens) to ids.

    Sequence layout, shared by training and every sampler::

        <bos> <image> x n_image prompt-words <sep> answer-canvas

    The answer canvas has a fixed length; during generation it starts as
    ``<mask>`` everywhere and a finished answer is its words followed by
    ``<eos>`` up to the end of the canvas (LLaDA's padding convention).
    """

    def __init__(self, vocab: Sequence[str] | None = None, n_image_tokens: int = 144) -> None:
        self.vocab: list[str] = list(vocab) if vocab is not None else list(SPECIAL_TOKENS) + list(WORDS)
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError("vocabulary has duplicate entries")
        missing = [t for t in SPECIAL_TOKENS if t not in self.vocab]
        if missing:
            raise ValueError(f"vocabulary lacks special tokens {missing}")
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(self.vocab)}
        self.n_image_tokens = int(n_image_tokens)
        self.pad_id = self.token_to_id["<pad>"]
        self.bos_id = self.token_to_id["<bos>"]
        self.eos_id = self.token_to_id["<eos>"]
        self.mask_id = self.token_to_id["<mask>"]
        self.image_id = self.token_to_id["<image>"]
        self.sep_id = self.token_to_id["<sep>"]
        self.special_ids = frozenset(self.token_to_id[t] for t in SPECIAL_TOKENS)

    def __len__(self) -> int:
        return len(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in text.strip().split():
            tid = self.token_to_id.get(word)
            if tid is None:
                raise ValueError(
                    f"unknown word {word!r}: the shapes tokenizer only knows the shapes-world vocabulary "
                    f"({', '.join(w for w in self.vocab if w not in SPECIAL_TOKENS)})"
                )
            ids.append(tid)
        return ids

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.vocab[int(i)] for i in ids]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True, stop_at_eos: bool = True) -> str:
        words = []
        for i in ids:
            i = int(i)
            if stop_at_eos and skip_special_tokens and i == self.eos_id:
                break
            if skip_special_tokens and i in self.special_ids:
                continue
            words.append(self.vocab[i])
        return " ".join(words)

    def build_prefix(self, prompt: str) -> list[int]:
        """``<bos> <image>*n prompt <sep>``: everything before the answer canvas."""
        return [self.bos_id] + [self.image_id] * self.n_image_tokens + self.encode(prompt) + [self.sep_id]

    def build_input_ids(self, prompt: str, gen_length: int) -> tuple[torch.Tensor, int]:
        """Prompt sequence plus a fully masked canvas; returns ``(ids, answer_start)``."""
        if gen_length < 1:
            raise ValueError("gen_length must be positive")
        prefix = self.build_prefix(prompt)
        ids = torch.tensor(prefix + [self.mask_id] * int(gen_length), dtype=torch.long)
        return ids, len(prefix)

    def answer_canvas(self, answer: str, gen_length: int) -> list[int]:
        """Target canvas for training: answer ids then ``<eos>`` to the end."""
        ids = self.encode(answer)
        if len(ids) >= gen_length:
            raise ValueError(f"answer of {len(ids)} words does not fit a canvas of {gen_length} (needs one <eos>)")
        return ids + [self.eos_id] * (gen_length - len(ids))

    def to_dict(self) -> dict:
        return {"vocab": list(self.vocab), "n_image_tokens": self.n_image_tokens}

    @classmethod
    def from_dict(cls, d: dict) -> "ShapesTokenizer":
        return cls(vocab=d["vocab"], n_image_tokens=d.get("n_image_tokens", 144))
