"""Corpora as streams of documents, read lazily so that no corpus has to fit in memory.

The default corpus is the source code of the running interpreter's standard library: real
text that every Python install has, so the first run needs no download. Local text, JSONL,
JSON, parquet and PDF files (or folders of them) and Hugging Face hub datasets (streamed)
work too.

A document is read only when its text is asked for, and a text file is read in pieces
(`Document.chunks`), so a 1 GB one-line file costs a few MB at a time. Every bad input is one
`UserError` line naming the file, the line or row, and the problem.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from minigpt.config import DataConfig
from minigpt.errors import UserError

SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
READ_CHARS = 1 << 20  # characters read from a text file at a time
TABLE_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass
class Document:
    id: str  # stable identity: its folder is the split's stratum; appears in error messages
    text: str | None = None  # the text, when it is already in memory (a table row, a PDF page set)
    path: Path | None = None  # else the text file it is read from, piece by piece

    def chunks(self, size: int | None = None) -> Iterator[str]:
        """The text in consecutive pieces of at most `size` characters (cut anywhere)."""
        size = size or READ_CHARS
        if self.text is not None:
            for start in range(0, len(self.text), size):
                yield self.text[start:start + size]
            return
        # Text mode: UTF-8 with replacement of bad bytes and universal newlines, as read_text does.
        with open(self.path, encoding="utf-8", errors="replace") as f:
            while piece := f.read(size):
                yield piece

    def read(self) -> str:
        return self.text if self.text is not None else "".join(self.chunks())


def stratum(doc_id: str) -> str:
    """The folder of a document (rows of one table file share the file's)."""
    return doc_id.split("#")[0].rpartition("/")[0]


def corpus_files(cfg: DataConfig) -> list[tuple[str, Path]]:
    """The (document id, path) of every file of a stdlib or files corpus, in reading order."""
    if cfg.source == "stdlib":
        root = sysconfig.get_paths()["stdlib"]
        found = list(_stdlib_files(root))
        if not found:
            raise UserError(f"data.source=stdlib: no .py sources under {root}; use data.source=files with a text corpus")
        return found
    files = []
    for entry in cfg.paths:
        path = Path(entry).expanduser()
        if not path.exists():
            raise UserError(f"data.paths: '{entry}' does not exist (looked in {Path.cwd()}); give an existing file or folder")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in cfg.extensions)
            if not found:
                raise UserError(f"data.paths: folder '{entry}' has no files ending in {', '.join(cfg.extensions)}; "
                                "set data.extensions to the ones it has")
            files.extend(found)
        else:
            files.append(path)
    return [(str(p), p) for p in files]


@functools.cache
def _stdlib_files(root: str) -> tuple[tuple[str, Path], ...]:
    """The standard library's .py files under `root`, listed once per process: the walk over about
    1,000 files took 30 ms, and the cache key (a stat of each file, still done every time) asks
    for the list at every start, sweep job and precheck. The interpreter's own library does not
    change while it runs."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = Path(dirpath) / name
                found.append((str(path.relative_to(root)), path))
    return tuple(found)


def iter_documents(cfg: DataConfig) -> Iterator[Document]:
    """Every document of the configured corpus in a fixed order, empty ones included."""
    if cfg.source == "hub":
        yield from hub_documents(cfg)
        return
    for doc_id, path in corpus_files(cfg):
        suffix = path.suffix.lower()
        if cfg.source == "files" and suffix in TABLE_SUFFIXES:
            yield from table_documents(path, cfg.text_field)
        elif cfg.source == "files" and suffix == ".pdf":
            yield Document(doc_id, text=_pdf_text(path))
        else:
            yield Document(doc_id, path=path)


def load_documents(cfg: DataConfig) -> list[Document]:
    """The documents that data preparation uses (non-empty, cut at data.max_chars) as a list
    with their text: for small corpora and tests."""
    docs, total = [], 0
    for doc in iter_documents(cfg):
        if cfg.max_chars and total >= cfg.max_chars:
            break
        text = doc.read()
        if text.strip():
            docs.append(Document(doc.id, text=text[:cfg.max_chars - total] if cfg.max_chars else text))
            total += len(docs[-1].text)
    if not docs:
        raise empty_corpus(cfg)
    return docs


def empty_corpus(cfg: DataConfig) -> UserError:
    where = {"stdlib": "the standard library", "files": ", ".join(cfg.paths), "hub": cfg.hub_name}[cfg.source]
    return UserError(f"data: the corpus from {where} is empty (no document has any text); point data.paths at text files")


def stdlib_documents() -> list[Document]:
    return load_documents(DataConfig())


def corpus_fingerprint(cfg: DataConfig, content: bool) -> str:
    """What identifies the corpus' text: every file's name, size and modification time, or
    (content=True) a hash of every document's text. A hub dataset is identified by its name,
    config, split and revision, or by its content."""
    h = hashlib.sha256()
    if content:
        for doc in iter_documents(cfg):
            h.update(doc.id.encode("utf-8", errors="replace") + b"\0")
            for piece in doc.chunks():
                h.update(piece.encode("utf-8", errors="replace"))
            h.update(b"\0")
    elif cfg.source == "hub":
        h.update(json.dumps([cfg.hub_name, cfg.hub_config, cfg.hub_split, cfg.hub_revision]).encode())
    else:
        for doc_id, path in corpus_files(cfg):
            st = path.stat()
            h.update(f"{doc_id}\0{st.st_size}\0{st.st_mtime_ns}\0".encode("utf-8", errors="replace"))
    return h.hexdigest()


# --- tables: JSONL / JSON / parquet ----------------------------------------------------------


def table_documents(path: Path, text_field: str) -> Iterator[Document]:
    """One document per row; rows whose text is null or missing count as empty."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows = _parquet_rows(path, text_field)
    else:
        rows = _json_rows(path)
    n = 0
    for where, row in rows:
        if not isinstance(row, dict):
            raise UserError(f"data.paths: '{path}' {where}: expected a JSON object with a '{text_field}' field, "
                            f"got {_json_kind(row)}; fix or remove it")
        if text_field not in row:
            raise UserError(f"data.text_field: '{path}' {where} has no column '{text_field}'; its columns are "
                            f"{', '.join(map(str, row)) or 'none'} (set data.text_field)")
        text = row[text_field]
        if text is not None and not isinstance(text, str):
            raise UserError(f"data.paths: '{path}' {where}: field '{text_field}' is {_json_kind(text)}, not a string; "
                            "fix that row or point data.text_field at a text column")
        yield Document(f"{path}#{n}", text=text or "")
        n += 1
    if n == 0:
        raise UserError(f"data.paths: '{path}' has no rows (an empty file?); fill it or remove it from data.paths")


def _json_rows(path: Path) -> Iterator[tuple[str, object]]:
    """JSON Lines, one object a line (blank lines skipped); or a .json file holding one array."""
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        if path.suffix.lower() == ".json" and head.startswith("["):
            try:
                items = json.load(f)
            except json.JSONDecodeError as e:
                raise UserError(f"data.paths: '{path}' line {e.lineno}: not valid JSON ({e.msg}, column {e.colno}); "
                                "fix the file") from None
            for i, item in enumerate(items):
                yield f"item {i}", item
            return
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"data.paths: '{path}' line {lineno}: not valid JSON ({e.msg}, column {e.colno}); "
                                "fix or remove that line") from None
            yield f"line {lineno}", row


def _parquet_rows(path: Path, text_field: str) -> Iterator[tuple[str, object]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:
        raise UserError(f"data.paths: could not read '{path}' as parquet: {first_line(e)}") from None
    names = table.schema_arrow.names
    if text_field not in names:
        raise UserError(f"data.text_field: '{path}' has no column '{text_field}'; its columns are {', '.join(names)}")
    column_type = table.schema_arrow.field(text_field).type
    if str(column_type) not in ("string", "large_string", "string_view"):
        raise UserError(f"data.paths: '{path}' column '{text_field}' holds {column_type}, not strings; "
                        "point data.text_field at a text column")
    row = 0
    for batch in table.iter_batches(batch_size=1024, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            yield f"row {row}", {text_field: text}
            row += 1


def _json_kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    return {list: "a list", dict: "an object", str: "a string", type(None): "null"}.get(type(value), type(value).__name__)


def _pdf_text(path: Path) -> str:
    try:
        from pypdf import PdfReader
    except ImportError:
        raise UserError(f"data.paths: reading PDF files ('{path}') needs the pdf extra: pip install 'minigpt[pdf]'") from None
    return "\n".join(page.extract_text() or "" for page in PdfReader(path).pages)


# --- the hub ---------------------------------------------------------------------------------


OFFLINE_VALUES = {"1", "on", "yes", "true"}  # what huggingface_hub and datasets read as set
HUB_CHECK_TIMEOUT_S = 1.0


def hub_offline_reason(cfg: DataConfig) -> str | None:
    """Why the hub dataset `cfg` cannot be streamed here, or None: HF_HUB_OFFLINE or
    HF_DATASETS_OFFLINE set, or no TCP connection to the hub (or the HTTPS proxy) within a second.
    A local dataset folder (data.hub_name=<folder>) needs no network. The check never waits longer:
    the name lookup runs in a daemon thread, so a hung resolver cannot hold the run either."""
    if Path(cfg.hub_name).expanduser().exists():
        return None
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in OFFLINE_VALUES:
            return f"{var}={os.environ[var]} is set"
    import threading
    from urllib.parse import urlsplit

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlsplit(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    outcome: list[str | None] = []

    def connect():
        import socket

        try:
            socket.create_connection((host, port), timeout=HUB_CHECK_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(f"{type(e).__name__}: {e}")

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(HUB_CHECK_TIMEOUT_S + 0.2)
    if outcome and outcome[0] is None:
        return None
    why = outcome[0] if outcome else "no answer"
    return f"no connection to {host}:{port} within {HUB_CHECK_TIMEOUT_S:.0f} s ({why})"


def check_hub_reachable(cfg: DataConfig) -> None:
    """One line, at once, for a hub dataset that cannot be streamed here (instead of the hub
    libraries' retries, half a minute without network)."""
    reason = hub_offline_reason(cfg)
    if reason is not None:
        raise UserError(
            f"data.hub_name={cfg.hub_name}: the Hugging Face hub cannot be reached ({reason}) and this dataset has no "
            f"token cache in data.cache_dir={cfg.cache_dir} yet; prepare it once where there is network (a later "
            "run, HF_HUB_OFFLINE=1 included, reuses the token cache; copy it here with its folder), or train on a "
            "local copy of its text: data=files data.paths=[<your copy>]")


def hub_documents(cfg: DataConfig) -> Iterator[Document]:
    """Rows of a hub dataset, streamed: nothing is downloaded whole or held in memory."""
    check_hub_reachable(cfg)  # before importing datasets (seconds)
    import datasets

    try:
        rows = datasets.load_dataset(cfg.hub_name, cfg.hub_config, split=cfg.hub_split, revision=cfg.hub_revision,
                                     streaming=True, cache_dir=str(Path(cfg.cache_dir) / "hf"))
        rows = iter(rows)
        first = next(rows, None)
    except Exception as e:
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        reason = "offline mode is on" if offline else first_line(e)
        raise UserError(
            f"data.hub_name={cfg.hub_name}: could not load it from the Hugging Face hub ({reason}); "
            "without network, download it once where there is one, or use data.source=files with a local copy"
        ) from None
    if first is None:
        return
    if cfg.text_field not in first:
        raise UserError(f"data.text_field: '{cfg.hub_name}' has no column '{cfg.text_field}'; its columns are "
                        f"{', '.join(first)}")
    for i, row in enumerate(_chain(first, rows)):
        text = row[cfg.text_field]
        if text is not None and not isinstance(text, str):
            raise UserError(f"data.text_field: '{cfg.hub_name}' row {i}: '{cfg.text_field}' is {_json_kind(text)}, "
                            "not a string; point data.text_field at a text column")
        yield Document(f"{cfg.hub_name}#{i}", text=text or "")


def _chain(first, rest):
    yield first
    yield from rest


def first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
