"""minigpt/data/corpus.py: the documents of the stdlib corpus and of local files, and bad input in them."""

import json

import numpy as np
import pytest
import torch

from minigpt.config import DataConfig
from minigpt.data.cache import Batches, prepare_data
from minigpt.data.corpus import load_documents, stdlib_documents
from minigpt.errors import UserError


def quiet(_msg):
    pass


def test_stdlib_corpus_is_real_python_without_tests():
    docs = stdlib_documents()
    ids = [d.id for d in docs]
    assert len(docs) > 300 and sum(len(d.text) for d in docs) > 5_000_000
    assert "os.py" in ids and "json/__init__.py" in ids
    assert not any(part in ("test", "tests", "site-packages") for i in ids for part in i.split("/")[:-1])
    assert ids == sorted(ids, key=lambda i: (i.split("/")[:-1], i)) or len(set(ids)) == len(ids)


@pytest.mark.slow
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


@pytest.mark.parametrize("content, problem", [
    ('{"text": "fine"}\n{"text": 42}\n', r"line 2: field 'text' is a number \(42\), not a string"),
    ('{"text": "fine"}\n\n{"text": ["a", "b"]}\n', r"line 3: field 'text' is a list, not a string"),
    ('{"text": "fine"}\n{"text": "cut sh\n', r"line 2: not valid JSON"),
    ('{"text": "fine"}\n[1, 2]\n', r"line 2: expected a JSON object"),
    ("", r"has no rows"),
    ('[{"text": "fine"},\n {"text": null},\n {"text": 5}]', r"item 2: field 'text' is a number \(5\)"),
])
def test_bad_jsonl_rows_are_one_line_naming_file_line_and_problem(tmp_path, content, problem):
    path = tmp_path / ("rows.json" if content.startswith("[") else "rows.jsonl")
    path.write_text(content)
    with pytest.raises(UserError, match=problem) as err:
        prepare_data(DataConfig(source="files", paths=[str(path)], cache_dir=str(tmp_path / "c")),
                     log=quiet, progress=False)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
