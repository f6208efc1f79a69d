"""minigpt/data/cache.py: the train/val split, the token cache (key, reuse, damage, interruption), batches."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from minigpt.config import DataConfig
from minigpt.data.cache import Batches, cache_key, prepare_data, split_documents, unigram_entropy
from minigpt.data.corpus import Document, load_documents, stdlib_documents
from minigpt.data.tokenizer import BPETokenizer
from minigpt.errors import UserError


def quiet(_msg):
    pass


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


@pytest.mark.slow
def test_cache_is_reused_and_invalidated(tmp_path):
    cfg = DataConfig(max_chars=60_000, vocab_size=400, cache_dir=str(tmp_path))
    messages = []
    first = prepare_data(cfg, log=messages.append, progress=False)
    assert any("wrote token cache" in m for m in messages)
    messages.clear()
    second = prepare_data(cfg, log=messages.append, progress=False)
    assert any("reusing token cache" in m for m in messages)
    assert second.cache_dir == first.cache_dir
    assert np.array_equal(np.asarray(first.train), np.asarray(second.train))
    # Anything that decides the tokens gives a new cache: vocabulary, split, the text itself.
    for changed in (DataConfig(max_chars=60_000, vocab_size=420, cache_dir=str(tmp_path)),
                    DataConfig(max_chars=60_000, vocab_size=400, split_seed=3, cache_dir=str(tmp_path)),
                    DataConfig(max_chars=50_000, vocab_size=400, cache_dir=str(tmp_path))):
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


def test_hub_dataset_offline_gives_one_clear_line_at_once(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE set, or no network: one line in about a second (not the hub libraries'
    retries), naming HF_HUB_OFFLINE=1, a local copy and data=files; the failed preparation leaves
    no cache that the next run would call interrupted (issue 27)."""
    import time

    from minigpt.data.cache import check_hub_data

    cfg = DataConfig(source="hub", hub_name="someone/not-downloaded", cache_dir=str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(UserError) as err:
        prepare_data(cfg, log=quiet, progress=False)
    message = str(err.value)
    assert time.perf_counter() - t < 2
    assert "HF_HUB_OFFLINE=1 is set" in message and "HF_HUB_OFFLINE=1 included" in message
    assert "data=files" in message and "local copy" in message and "\n" not in message
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # no half-built cache left behind
    with pytest.raises(UserError, match="HF_HUB_OFFLINE=1 is set"):
        check_hub_data(cfg)  # the precheck's form: before any folder is made

    # No offline variable, no network: a refused connection (a port nobody listens on) answers at once.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nobody listens there
    monkeypatch.setenv("HF_ENDPOINT", f"https://127.0.0.1:{port}")
    t = time.perf_counter()
    with pytest.raises(UserError, match=f"no connection to 127.0.0.1:{port} within 1 s") as err:
        check_hub_data(cfg)
    assert time.perf_counter() - t < 2 and "data=files" in str(err.value)

    # A hub dataset whose token cache is built needs no network; a preparation that fails on a row
    # (a bad input found by the data) leaves no cache behind either. Rows stand in for the hub's.
    import minigpt.data.corpus

    rows = [Document(f"x#{i}", text=f"row {i} " * 20) for i in range(40)]

    def hub_rows(cfg):
        for i, doc in enumerate(rows):
            if i == 30 and cfg.text_field != "text":
                raise UserError(f"data.text_field: no column '{cfg.text_field}'")
            yield doc

    monkeypatch.setattr(minigpt.data.corpus, "hub_documents", hub_rows)
    # progress=True below: progress=False imports datasets (seconds) to quiet its bars
    monkeypatch.delenv("HF_ENDPOINT")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    built = DataConfig(source="hub", hub_name="someone/downloaded", vocab_size=300, cache_dir=str(tmp_path / "c"))
    with pytest.raises(UserError, match="no column 'body'"):
        prepare_data(replace(built, text_field="body"), log=quiet, progress=True, check_hub=False)
    assert [p.name for p in (tmp_path / "c").iterdir() if p.is_dir()] == []
    prepare_data(built, log=quiet, progress=True, check_hub=False)  # as where the hub was reachable
    check_hub_data(built)
    messages = []
    prepare_data(built, log=messages.append, progress=True)
    assert len(messages) == 1 and messages[0].startswith("data: reusing token cache")


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


@pytest.mark.slow
def test_pieces_tokenize_to_the_tokens_of_the_whole():
    """Long documents are tokenized in pieces cut where no token can span: same ids as whole."""
    from minigpt.data.cache import pieces

    docs = stdlib_documents()[:30]
    tok = BPETokenizer.train(iter([d.text for d in docs]), vocab_size=700)
    texts = [d.text for d in docs[:12]]
    texts.append(" ".join(t.replace("\n", " ") for t in texts))  # one long line
    texts.append("x = 1   \n\n\t  y  \u3000z 'll's  " * 200)  # runs of mixed whitespace, contractions
    for text in texts:
        cut = list(pieces([text[i:i + 777] for i in range(0, len(text), 777)], size=300))
        assert "".join(cut) == text and len(cut) > len(text) // 300
        ids = [i for piece in cut for i in tok.encode(piece)]
        assert ids == tok.encode(text)
    # With nowhere to cut (no space after a non-space), a piece ends at the size itself.
    assert [len(p) for p in pieces(["a" * 1000], size=300)] == [300, 300, 300, 100]


def test_a_one_line_file_is_read_and_tokenized_in_pieces(tmp_path, monkeypatch):
    import minigpt.data.cache
    import minigpt.data.corpus

    monkeypatch.setattr(minigpt.data.corpus, "READ_CHARS", 5_000)  # small pieces: many cuts in a small file
    monkeypatch.setattr(minigpt.data.cache, "PIECE_CHARS", 2_000)
    monkeypatch.setattr(minigpt.data.cache, "BATCH_CHARS", 9_000)
    text = " ".join(d.text.replace("\n", " ") for d in stdlib_documents()[:10])[:200_000]
    (tmp_path / "line.txt").write_text(text)
    cfg = DataConfig(source="files", paths=[str(tmp_path / "line.txt")], vocab_size=500, cache_dir=str(tmp_path / "c"))
    data = prepare_data(cfg, log=quiet, progress=False)
    cut = int(len(text) * 0.95)  # no line break: the split cuts at the fraction itself
    expected_train = data.tokenizer.encode(text[:cut]) + [data.tokenizer.eot_id]
    expected_val = data.tokenizer.encode(text[cut:]) + [data.tokenizer.eot_id]
    assert np.asarray(data.train).tolist() == expected_train
    assert np.asarray(data.val).tolist() == expected_val


@pytest.mark.slow
def test_bpe_learns_from_a_bounded_share_of_every_training_document(tmp_path):
    messages = []
    cfg = DataConfig(max_chars=200_000, vocab_size=400, tokenizer_train_chars=50_000, cache_dir=str(tmp_path))
    data = prepare_data(cfg, log=messages.append, progress=False)
    sampled = data.meta["tokenizer_train_chars"]
    assert 50_000 <= sampled < 50_000 + data.meta["train_docs"]  # each document rounds its share up
    assert any("trained a byte-level BPE" in m and f"{sampled:,} characters" in m for m in messages)
    whole = prepare_data(DataConfig(max_chars=200_000, vocab_size=400, cache_dir=str(tmp_path)), log=quiet, progress=False)
    assert whole.meta["tokenizer_train_chars"] > 150_000 and whole.cache_dir != data.cache_dir
    # Only the tokenizer differs: the same documents, split the same way.
    assert (whole.meta["train_docs"], whole.meta["characters"]) == (data.meta["train_docs"], data.meta["characters"])


def test_interrupted_preparation_leaves_no_cache_that_is_used(tmp_path, monkeypatch):
    cfg = DataConfig(max_chars=100_000, vocab_size=300, cache_dir=str(tmp_path))
    calls = []

    def fail_on_second_batch(self, texts, dtype, check=False):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, texts, dtype, check)

    import minigpt.data.cache

    monkeypatch.setattr(minigpt.data.cache, "BATCH_CHARS", 20_000)
    real = BPETokenizer.encode_arrays
    monkeypatch.setattr(BPETokenizer, "encode_arrays", fail_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg, log=quiet, progress=False)
    monkeypatch.setattr(BPETokenizer, "encode_arrays", real)
    (cache,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert not (cache / "meta.json").exists() and not (cache / "train.bin").exists()
    messages = []
    data = prepare_data(cfg, log=messages.append, progress=False)
    assert any("incomplete" in m for m in messages) and data.meta["train_tokens"] == len(data.train) > 0
    assert not list(cache.glob("*.tmp"))


@pytest.mark.slow
def test_damaged_cache_is_found_on_load_and_rebuilt(tmp_path):
    import os

    cfg = DataConfig(max_chars=60_000, vocab_size=300, cache_dir=str(tmp_path))
    first = prepare_data(cfg, log=quiet, progress=False)
    good = np.asarray(first.train).copy()
    # An id outside the vocabulary (the file keeps its size): found and rebuilt, not an IndexError at step 0.
    path = first.cache_dir / "train.bin"
    with open(path, "r+b") as f:
        f.seek(len(good) // 2 * 2)
        f.write(np.array([65000], dtype=np.uint16).tobytes())
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp, stamp + 10**9))  # a clock coarser than this test must not hide the edit
    messages = []
    again = prepare_data(cfg, log=messages.append, progress=False)
    assert any("damaged" in m and "65000" in m and "rebuilding" in m for m in messages), messages
    assert np.array_equal(np.asarray(again.train), good)
    # A garbled tokenizer.json: found and rebuilt, not a JSONDecodeError.
    (first.cache_dir / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    messages.clear()
    again = prepare_data(cfg, log=messages.append, progress=False)
    assert any("damaged" in m and "tokenizer.json" in m for m in messages), messages
    assert np.array_equal(np.asarray(again.train), good) and again.tokenizer.vocab_size == 300


@pytest.mark.slow
def test_progress_false_silences_every_bar_the_datasets_ones_included(tmp_path, capfd):
    import datasets

    datasets.enable_progress_bars()  # as in a fresh process (another test may have turned them off)
    folder = tmp_path / "rows"
    folder.mkdir()
    for name in ("a", "b"):
        with open(folder / f"{name}.jsonl", "w") as f:
            for i in range(40):
                f.write(json.dumps({"text": f"{name} row {i} " * 30}) + "\n")
    capfd.readouterr()
    for source in (dict(source="files", paths=[str(folder)]), dict(source="hub", hub_name=str(folder))):
        data = prepare_data(DataConfig(**source, vocab_size=300, cache_dir=str(tmp_path / "c")), log=quiet, progress=False)
        assert data.meta["train_docs"] + data.meta["val_docs"] == 80
    out, err = capfd.readouterr()
    assert out + err == ""
    assert datasets.is_progress_bar_enabled()  # left as it was found


