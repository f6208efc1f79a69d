"""Tokenizers: a byte-level BPE trained with Hugging Face `tokenizers`, and raw bytes.

Both map any text to ids and back without loss, and both reserve one id for the end-of-text
token that separates documents. A BPE tokenizer is trained on the training split only and
saved next to the token cache it produced, so it is never retrained for the same data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

EOT = "<|endoftext|>"
CHECK_CHARS = 500_000  # characters encoded both ways by encode_arrays(check=True)
# The pre-tokenizer pattern of GPT-2, which tokenizers' ByteLevel pre-tokenizer uses.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class ByteTokenizer:
    """Ids 0..255 are the UTF-8 bytes; 256 is end-of-text. Needs no training."""

    kind = "byte"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_arrays(self, texts: list[str], dtype, check: bool = False) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(dtype) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(i for i in ids if i < 256)
        return data.decode("utf-8", errors="replace")

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json())

    def to_json(self) -> str:
        return json.dumps({"kind": "byte"})


class BPETokenizer:
    """Byte-level BPE (GPT-2 style): bytes are the base alphabet, so nothing is out of vocabulary."""

    kind = "bpe"

    def __init__(self, tok):  # tok: tokenizers.Tokenizer
        # A document that contains the text "<|endoftext|>" must not end there: special tokens
        # are matched only where data.py inserts them, never in the text.
        tok.encode_special_tokens = True
        self._tok = tok
        self._fast = None  # the tiktoken copy, built on first use; False: not available or not equal
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

    def encode_arrays(self, texts: list[str], dtype, check: bool = False) -> list[np.ndarray]:
        """Ids of many texts at once, on all cores: for preparing token caches.

        tiktoken runs the same byte-level BPE about 4x faster than `tokenizers` on a CPU
        (docs/performance.md). Its rule (merge the adjacent pair whose joined bytes have the
        lowest id) equals BPE's (apply the earliest learned merge) whenever ids follow merge
        order, as they do here, except where a token can be joined from two different pairs;
        check=True also encodes the first CHECK_CHARS characters with `tokenizers` and keeps
        `tokenizers` for good if the two differ."""
        fast = self.tiktoken_encoding()
        if fast is not None:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            ids = fast.encode_ordinary_batch(texts, num_threads=threads or 1)
            probe = texts[:max(1, int(np.searchsorted(np.cumsum([len(t) for t in texts]), CHECK_CHARS)))]
            if not check or ids[:len(probe)] == [e.ids for e in self._tok.encode_batch_fast(probe)]:
                return [np.array(i, dtype=dtype) for i in ids]
            self._fast = False
        return [np.array(e.ids, dtype=dtype) for e in self._tok.encode_batch_fast(texts)]

    @property
    def backend(self):
        """The Hugging Face `tokenizers.Tokenizer` (the reference encoder)."""
        return self._tok

    @property
    def uses_tiktoken(self) -> bool:
        return self.tiktoken_encoding() is not None

    def tiktoken_encoding(self):
        """The tokenizer as a tiktoken Encoding (built once), or None without tiktoken."""
        if self._fast is None:
            try:
                import tiktoken
            except ImportError:
                self._fast = False
                return None
            # Byte-level BPE writes byte b as the character BYTE_CHARS[b]; tiktoken wants the bytes.
            byte_of = {c: b for b, c in enumerate(byte_chars())}
            ranks = {bytes(byte_of[c] for c in token): i for token, i in self._tok.get_vocab().items() if token != EOT}
            self._fast = tiktoken.Encoding("minigpt-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                           special_tokens={EOT: self.eot_id})
        return self._fast or None

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, path: Path) -> None:
        self._tok.save(str(path))

    def to_json(self) -> str:
        """What `save` writes (pretty-printed, as tokenizers' save does)."""
        return self._tok.to_str(pretty=True)


def load_tokenizer(path: Path) -> ByteTokenizer | BPETokenizer:
    """Load what `save` wrote (tokenizer.json next to a token cache)."""
    return tokenizer_from_json(Path(path).read_text())


def tokenizer_from_json(text: str) -> ByteTokenizer | BPETokenizer:
    """The tokenizer a saved JSON text describes (checkpoints carry theirs this way)."""
    if json.loads(text).get("kind") == "byte":
        return ByteTokenizer()
    from tokenizers import Tokenizer

    return BPETokenizer(Tokenizer.from_str(text))


def byte_chars() -> list[str]:
    """GPT-2's map of the 256 bytes to printable characters (the byte-level BPE alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def token_dtype(vocab_size: int):
    """The smallest unsigned integer type that holds every id."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32
