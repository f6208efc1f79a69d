"""Tokenizers: a byte-level BPE trained with Hugging Face `tokenizers`, and raw bytes.

Both map any text to ids and back without loss, and both reserve one id for the end-of-text
token that separates documents. A BPE tokenizer is trained on the training split only and
saved next to the token cache it produced, so it is never retrained for the same data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

EOT = "<|endoftext|>"


class ByteTokenizer:
    """Ids 0..255 are the UTF-8 bytes; 256 is end-of-text. Needs no training."""

    kind = "byte"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_arrays(self, texts: list[str], dtype) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(dtype) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(i for i in ids if i < 256)
        return data.decode("utf-8", errors="replace")

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"kind": "byte"}))


class BPETokenizer:
    """Byte-level BPE (GPT-2 style): bytes are the base alphabet, so nothing is out of vocabulary."""

    kind = "bpe"

    def __init__(self, tok):  # tok: tokenizers.Tokenizer
        # A document that contains the text "<|endoftext|>" must not end there: special tokens
        # are matched only where data.py inserts them, never in the text.
        tok.encode_special_tokens = True
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.eot_id = tok.token_to_id(EOT)

    @classmethod
    def train(cls, texts: Iterator[str], vocab_size: int, show_progress: bool = False) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        # add_prefix_space=False keeps decode(encode(s)) == s for every s.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts)]

    def encode_arrays(self, texts: list[str], dtype) -> list[np.ndarray]:
        """Ids of many texts at once, on all cores (the tokenizer's own thread pool)."""
        return [np.array(e.ids, dtype=dtype) for e in self._tok.encode_batch_fast(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, path: Path) -> None:
        self._tok.save(str(path))


def load_tokenizer(path: Path) -> ByteTokenizer | BPETokenizer:
    """Load what `save` wrote (tokenizer.json next to a token cache)."""
    return tokenizer_from_json(Path(path).read_text())


def tokenizer_from_json(text: str) -> ByteTokenizer | BPETokenizer:
    """The tokenizer a saved JSON text describes (checkpoints carry theirs this way)."""
    if json.loads(text).get("kind") == "byte":
        return ByteTokenizer()
    from tokenizers import Tokenizer

    return BPETokenizer(Tokenizer.from_str(text))


def token_dtype(vocab_size: int):
    """The smallest unsigned integer type that holds every id."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32
