import json

import numpy as np
import pytest
import torch

from minigpt.config import DataConfig
from minigpt.corpus import Document, load_documents, stdlib_documents
from minigpt.data import (Batches, cache_key, prepare_data, split_documents,
                          unigram_entropy)
from minigpt.errors import UserError
from minigpt.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer

SAMPLES = [
    "def f(x):\n    return x ** 2  # square\n",
    "  leading spaces, trailing tabs\t\t\n\n\n",
    "unicode: héllo wörld ✓ 日本語 🙂",
    "",
    "<|endoftext|> is just text here",
]


def quiet(_msg):
    pass


def test_stdlib_corpus_is_real_python_without_tests():
    docs = stdlib_documents()
    ids = [d.id for d in docs]
    assert len(docs) > 300 and sum(len(d.text) for d in docs) > 5_000_000
    assert "os.py" in ids and "json/__init__.py" in ids
    assert not any(part in ("test", "tests", "site-packages") for i in ids for part in i.split("/")[:-1])
    assert ids == sorted(ids, key=lambda i: (i.split("/")[:-1], i)) or len(set(ids)) == len(ids)


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


def test_bpe_compresses_code():
    docs = stdlib_documents()[:60]
    tok = BPETokenizer.train(iter([d.text for d in docs]), vocab_size=1024)
    text = docs[0].text
    assert len(tok.encode(text)) < 0.6 * len(text.encode())  # merges learned: fewer tokens than bytes


def test_split_is_by_document_deterministic_and_disjoint():
    docs = [Document(f"d{i}", f"text {i}\n" * 5) for i in range(100)]
    train, val = split_documents(docs, 0.1, seed=0)
    again_train, again_val = split_documents(docs, 0.1, seed=0)
    assert [d.id for d in val] == [d.id for d in again_val] and len(val) == 10 and len(train) == 90
    assert not {d.id for d in train} & {d.id for d in val}
    other = split_documents(docs, 0.1, seed=1)[1]
    assert {d.id for d in other} != {d.id for d in val}


def test_single_document_is_cut_at_a_line_break():
    text = "".join(f"line {i}\n" for i in range(1000))
    train, val = split_documents([Document("only", text)], 0.1, seed=0)
    assert train[0].text + val[0].text == text
    assert train[0].text.endswith("\n") and 0.05 < len(val[0].text) / len(text) < 0.15


def test_cache_is_reused_and_invalidated(tmp_path):
    cfg = DataConfig(max_chars=150_000, vocab_size=400, cache_dir=str(tmp_path))
    messages = []
    first = prepare_data(cfg, log=messages.append, progress=False)
    assert any("wrote token cache" in m for m in messages)
    messages.clear()
    second = prepare_data(cfg, log=messages.append, progress=False)
    assert any("reusing token cache" in m for m in messages)
    assert second.cache_dir == first.cache_dir
    assert np.array_equal(np.asarray(first.train), np.asarray(second.train))
    # Anything that decides the tokens gives a new cache: vocabulary, split, the text itself.
    for changed in (DataConfig(max_chars=150_000, vocab_size=420, cache_dir=str(tmp_path)),
                    DataConfig(max_chars=150_000, vocab_size=400, split_seed=3, cache_dir=str(tmp_path)),
                    DataConfig(max_chars=140_000, vocab_size=400, cache_dir=str(tmp_path))):
        assert prepare_data(changed, log=quiet, progress=False).cache_dir != first.cache_dir
    # A cache left half-written (meta.json missing or a file cut short) is rebuilt, not trusted.
    (first.cache_dir / "meta.json").unlink()
    messages.clear()
    rebuilt = prepare_data(cfg, log=messages.append, progress=False)
    assert any("incomplete" in m for m in messages)
    with open(rebuilt.cache_dir / "train.bin", "r+b") as f:
        f.truncate(100)
    messages.clear()
    prepare_data(cfg, log=messages.append, progress=False)
    assert any("incomplete" in m for m in messages)


def test_tokens_decode_back_to_the_documents(tmp_path):
    cfg = DataConfig(max_chars=60_000, vocab_size=400, cache_dir=str(tmp_path), val_fraction=0.2)
    data = prepare_data(cfg, log=quiet, progress=False)
    docs = load_documents(cfg)
    train_docs, val_docs = split_documents(docs, 0.2, 0)
    pieces = np.split(np.asarray(data.val), np.where(np.asarray(data.val) == data.tokenizer.eot_id)[0] + 1)
    decoded = [data.tokenizer.decode(p) for p in pieces if len(p)]
    assert decoded == [d.text for d in val_docs]
    meta = json.loads((data.cache_dir / "meta.json").read_text())
    assert meta["train_docs"] == len(train_docs) and meta["val_tokens"] == len(data.val)
    assert 0 < meta["unigram_entropy_val"] < np.log(meta["vocab_size"])


def test_unigram_entropy():
    assert unigram_entropy(np.array([1, 1, 1, 1]), 4) == pytest.approx(0.0)
    assert unigram_entropy(np.array([0, 1, 2, 3]), 4) == pytest.approx(np.log(4))
    assert unigram_entropy(np.array([0, 0, 0, 1]), 4) == pytest.approx(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))


def test_local_text_jsonl_and_parquet_files(tmp_path):
    import datasets

    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha text\n" * 50)
    (folder / "b.md").write_text("# beta\n" * 50)
    (folder / "skip.bin").write_bytes(b"\x00\x01")
    with open(folder / "rows.jsonl", "w") as f:
        for i in range(5):
            f.write(json.dumps({"content": f"row {i} " * 20, "other": i}) + "\n")
    datasets.Dataset.from_dict({"content": ["parquet row one " * 10, "parquet row two " * 10]}).to_parquet(
        str(folder / "t.parquet"))
    cfg = DataConfig(source="files", paths=[str(folder)], text_field="content", cache_dir=str(tmp_path / "c"))
    docs = load_documents(cfg)
    texts = [d.text for d in docs]
    assert "alpha text\n" * 50 in texts and "# beta\n" * 50 in texts
    assert sum(t.startswith("row ") for t in texts) == 5 and sum(t.startswith("parquet row") for t in texts) == 2
    assert len(docs) == 9  # skip.bin is not a text extension
    with pytest.raises(UserError, match="no column 'text'.*content"):
        load_documents(DataConfig(source="files", paths=[str(folder / "rows.jsonl")], cache_dir=str(tmp_path / "c")))


def test_bad_data_inputs_say_what_is_wrong(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_documents(DataConfig(source="files", paths=[str(tmp_path / "nope")]))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("   \n\n")
    with pytest.raises(UserError, match="empty"):
        load_documents(DataConfig(source="files", paths=[str(empty)]))
    with pytest.raises(UserError, match="no files ending in"):
        load_documents(DataConfig(source="files", paths=[str(empty)], extensions=[".jsonl"]))
    with pytest.raises(UserError, match="fewer than one context window"):
        Batches(np.arange(10), block_size=16, batch_size=2, seed=0, device=torch.device("cpu"))


def test_hub_dataset_offline_gives_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        load_documents(DataConfig(source="hub", hub_name="someone/not-downloaded", cache_dir=str(tmp_path)))
    assert "Hugging Face hub" in str(err.value) and "offline" in str(err.value) and "\n" not in str(err.value)


def test_batches_are_reproducible_and_sliced_from_one_global_batch():
    tokens = np.arange(10_000, dtype=np.uint16)
    cpu = torch.device("cpu")
    one = Batches(tokens, 8, 8, seed=3, device=cpu)
    eight = Batches(tokens, 8, 1, seed=3, device=cpu)
    x, y = one.train_batch(step=5, index=0)
    parts = [eight.train_batch(step=5, index=i) for i in range(8)]
    assert torch.equal(x, torch.cat([p[0] for p in parts])) and torch.equal(y, torch.cat([p[1] for p in parts]))
    assert torch.equal(y[:, :-1], x[:, 1:])  # targets are the inputs shifted by one
    assert torch.equal(one.train_batch(5, 0)[0], x)  # same step, same windows
    assert not torch.equal(one.train_batch(6, 0)[0], x)  # next step, new windows
    assert torch.equal(one.eval_batch(0)[0], one.eval_batch(0)[0])
    assert x.dtype == torch.int64 and x.shape == (8, 8)


def test_cache_key_comes_from_file_stats_and_settings_or_from_content(tmp_path):
    import os

    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("hello\n")
    (folder / "b.txt").write_text("world\n")
    cfg = DataConfig(source="files", paths=[str(folder)])
    content = DataConfig(source="files", paths=[str(folder)], cache_key="content")
    base, base_content = cache_key(cfg), cache_key(content)
    assert cache_key(cfg) == base and base_content != base
    # Settings that decide the tokens change the key.
    for changed in (dict(vocab_size=5000), dict(tokenizer="byte"), dict(split_seed=1), dict(max_chars=3),
                    dict(tokenizer_train_chars=10)):
        assert cache_key(DataConfig(source="files", paths=[str(folder)], **changed)) != base, changed
    # The same text rewritten (a new modification time): a new stat key, the same content key.
    os.utime(folder / "a.txt", ns=(1, 1))
    assert cache_key(cfg) != base and cache_key(content) == base_content
    stat_after_touch = cache_key(cfg)
    # A changed size changes both; so does a changed text of the same size under the content key.
    (folder / "a.txt").write_text("hellO\n")
    os.utime(folder / "a.txt", ns=(1, 1))
    assert cache_key(cfg) == stat_after_touch  # same name, size and time: the cheap key cannot see it
    assert cache_key(content) != base_content
    (folder / "b.txt").write_text("world, longer\n")
    assert cache_key(cfg) != stat_after_touch


def test_split_is_stratified_by_folder():
    """Each folder gives its share of validation documents, so one cluster cannot dominate."""
    docs = [Document(f"a/{i}", "x") for i in range(100)] + [Document(f"b/{i}", "y") for i in range(60)] + \
        [Document(f"c/sub/{i}", "z") for i in range(40)]
    for seed in range(5):
        _, val = split_documents(docs, 0.1, seed)
        counts = {f: sum(d.id.startswith(f + "/") for d in val) for f in ("a", "b", "c")}
        assert counts == {"a": 10, "b": 6, "c": 4}, (seed, counts)
