"""minigpt/data/tokenizer.py: the byte and BPE tokenizers (round trip, compression, the fast encoder)."""

import numpy as np
import pytest

from minigpt.data.corpus import stdlib_documents
from minigpt.data.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer

SAMPLES = [
    "def f(x):\n    return x ** 2  # square\n",
    "  leading spaces, trailing tabs\t\t\n\n\n",
    "unicode: héllo wörld ✓ 日本語 🙂",
    "",
    "<|endoftext|> is just text here",
]


@pytest.mark.parametrize("tokenizer", ["bpe", "byte"])
def test_tokenizer_round_trip(tokenizer, tmp_path):
    if tokenizer == "bpe":
        tok = BPETokenizer.train(iter([d.text for d in stdlib_documents()[:40]]), vocab_size=600)
        assert tok.vocab_size == 600
    else:
        tok = ByteTokenizer()
    for text in SAMPLES:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    # Saved and loaded, it encodes the same.
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.encode(SAMPLES[2]) == tok.encode(SAMPLES[2]) and again.eot_id == tok.eot_id


@pytest.mark.slow
def test_bpe_compresses_code():
    docs = stdlib_documents()[:60]
    tok = BPETokenizer.train(iter([d.text for d in docs]), vocab_size=1024)
    text = docs[0].text
    assert len(tok.encode(text)) < 0.6 * len(text.encode())  # merges learned: fewer tokens than bytes


@pytest.mark.slow
def test_fast_encoder_gives_the_ids_of_tokenizers_and_steps_aside_when_it_would_not(monkeypatch):
    import tiktoken

    tok = BPETokenizer.train(iter([d.text for d in stdlib_documents()[:40]] + SAMPLES), vocab_size=600)
    texts = SAMPLES + [d.text for d in stdlib_documents()[40:50]]
    fast = [a.tolist() for a in tok.encode_arrays(texts, np.int64)]
    assert tok.uses_tiktoken and fast == [tok.encode(t) for t in texts]

    class Wrong:  # an encoder that disagrees with tokenizers
        def encode_ordinary_batch(self, texts, num_threads):
            return [[1] * len(t) for t in texts]

    monkeypatch.setattr(tiktoken, "Encoding", lambda *args, **kwargs: Wrong())
    checked = BPETokenizer(tok.backend)  # the same BPE; its tiktoken copy is built (wrongly) on first use
    ids = [a.tolist() for a in checked.encode_arrays(texts, np.int64, check=True)]
    assert ids == [tok.encode(t) for t in texts] and not checked.uses_tiktoken
