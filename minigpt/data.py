"""Data: corpus -> documents -> train/validation split -> tokenizer -> token cache -> batches.

The default corpus is the source code of the running interpreter's standard library: real
text that every Python install has, so the first run needs no download. Local text, JSONL,
parquet and PDF files (or folders of them) and Hugging Face hub datasets work too.

Prepared tokens live in `<cache_dir>/<name>-<hash>/`, where the hash covers everything that
decides them: the documents' text, the split and the tokenizer settings. A second run with the
same inputs reuses the cache and says so; a cache that an interrupted run left half-written
is detected (no meta.json, or files of the wrong size) and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from minigpt.config import DataConfig
from minigpt.errors import UserError
from minigpt.files import replace_durably
from minigpt.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer, token_dtype

CACHE_FORMAT = 2  # bump when the layout or the way tokens are made changes
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


@dataclass
class Document:
    id: str  # stable identity: decides the split, appears in error messages
    text: str


@dataclass
class TokenData:
    train: np.ndarray  # memory-mapped token ids, documents separated by end-of-text
    val: np.ndarray
    tokenizer: BPETokenizer | ByteTokenizer
    meta: dict
    cache_dir: Path


# --- documents ----------------------------------------------------------------------------


def load_documents(cfg: DataConfig) -> list[Document]:
    """All documents of the configured corpus, in a deterministic order, empty ones dropped."""
    if cfg.source == "stdlib":
        docs = stdlib_documents()
    elif cfg.source == "files":
        docs = file_documents(cfg)
    else:
        docs = hub_documents(cfg)
    docs = [d for d in docs if d.text.strip()]
    if cfg.max_chars:
        docs = _truncate(docs, cfg.max_chars)
    if not docs:
        where = {"stdlib": "the standard library", "files": ", ".join(cfg.paths), "hub": cfg.hub_name}[cfg.source]
        raise UserError(f"data: the corpus from {where} is empty (no document has any text); point data.paths at text files")
    return docs


def stdlib_documents() -> list[Document]:
    """Every .py file of the standard library, without its test suites and installed packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = Path(dirpath) / name
                docs.append(Document(str(path.relative_to(root)), path.read_text("utf-8", errors="replace")))
    if not docs:
        raise UserError(f"data.source=stdlib: no .py sources under {root}; use data.source=files with a text corpus")
    return docs


def file_documents(cfg: DataConfig) -> list[Document]:
    """Text files are one document each; JSONL/JSON and parquet files one per row; PDFs one per file."""
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
    docs = []
    for path in files:
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json", ".parquet"):
            docs.extend(_table_documents(path, cfg))
        elif suffix == ".pdf":
            docs.append(Document(str(path), _pdf_text(path)))
        else:
            docs.append(Document(str(path), path.read_text("utf-8", errors="replace")))
    return docs


def _table_documents(path: Path, cfg: DataConfig) -> list[Document]:
    import datasets

    builder = "parquet" if path.suffix.lower() == ".parquet" else "json"
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train",
                                      cache_dir=str(Path(cfg.cache_dir) / "hf"))
    except Exception as e:  # a malformed file: say which one, in one line
        raise UserError(f"data.paths: could not read '{path}' as {builder}: {_first_line(e)}") from None
    return _rows_to_documents(table, cfg.text_field, str(path))


def _rows_to_documents(table, text_field: str, origin: str) -> list[Document]:
    if text_field not in table.column_names:
        raise UserError(f"data.text_field: '{origin}' has no column '{text_field}'; its columns are "
                        f"{', '.join(table.column_names)}")
    return [Document(f"{origin}#{i}", text or "") for i, text in enumerate(table[text_field])]


def _pdf_text(path: Path) -> str:
    try:
        from pypdf import PdfReader
    except ImportError:
        raise UserError(f"data.paths: reading PDF files ('{path}') needs the pdf extra: pip install 'minigpt[pdf]'") from None
    return "\n".join(page.extract_text() or "" for page in PdfReader(path).pages)


def hub_documents(cfg: DataConfig) -> list[Document]:
    import datasets

    try:
        table = datasets.load_dataset(cfg.hub_name, cfg.hub_config, split=cfg.hub_split,
                                      revision=cfg.hub_revision, cache_dir=str(Path(cfg.cache_dir) / "hf"))
    except Exception as e:
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        reason = "offline mode is on" if offline else _first_line(e)
        raise UserError(
            f"data.hub_name={cfg.hub_name}: could not load it from the Hugging Face hub ({reason}); "
            "without network, download it once where there is one, or use data.source=files with a local copy"
        ) from None
    return _rows_to_documents(table, cfg.text_field, cfg.hub_name)


def _truncate(docs: list[Document], max_chars: int) -> list[Document]:
    kept, total = [], 0
    for d in docs:
        if total >= max_chars:
            break
        kept.append(Document(d.id, d.text[: max_chars - total]))
        total += len(kept[-1].text)
    return kept


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


# --- split --------------------------------------------------------------------------------


def split_documents(docs: list[Document], val_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    """Hold out whole documents for validation: a seeded choice, the same on every machine.

    Stratified systematic sampling: documents are ordered by folder (their stratum), shuffled
    within it, and every 1/val_fraction-th one (from a random offset) goes to validation. The
    validation split then mirrors the corpus' mix of folders: in the stdlib corpus a plain random
    5% can land on a cluster of generated data tables (encodings/, html/entities.py) and read
    0.5 nats harder than the rest; stratified, the spread between seeds is half as wide.

    A corpus of a single document (one big text file) cannot be split by document; it is cut
    at the line break nearest to the validation fraction instead, the tail going to validation.
    """
    if len(docs) == 1:
        text = docs[0].text
        cut = text.rfind("\n", 0, int(len(text) * (1 - val_fraction)))
        cut = cut + 1 if cut > 0 else int(len(text) * (1 - val_fraction))
        return [Document(docs[0].id + "#train", text[:cut])], [Document(docs[0].id + "#val", text[cut:])]
    rng = np.random.default_rng(seed)
    shuffle_keys = rng.random(len(docs))
    order = sorted(range(len(docs)), key=lambda i: (_stratum(docs[i].id), shuffle_keys[i]))
    n_val = min(max(1, round(val_fraction * len(docs))), len(docs) - 1)
    picks = np.floor((rng.random() + np.arange(n_val)) * len(docs) / n_val).astype(int)
    val_index = {order[p] for p in picks}
    train = [d for i, d in enumerate(docs) if i not in val_index]
    val = [d for i, d in enumerate(docs) if i in val_index]
    return train, val


def _stratum(doc_id: str) -> str:
    """The folder of a document (rows of one table file share the file's)."""
    return doc_id.split("#")[0].rpartition("/")[0]


# --- cache --------------------------------------------------------------------------------


def cache_key(docs: list[Document], cfg: DataConfig) -> str:
    """A hash of everything that decides the cached tokens."""
    h = hashlib.sha256()
    settings = dict(format=CACHE_FORMAT, tokenizer=cfg.tokenizer, val_fraction=cfg.val_fraction,
                    split_seed=cfg.split_seed, vocab_size=cfg.vocab_size if cfg.tokenizer == "bpe" else None)
    h.update(json.dumps(settings, sort_keys=True).encode())
    for d in docs:
        h.update(d.id.encode("utf-8", errors="replace") + b"\0")
        h.update(d.text.encode("utf-8", errors="replace") + b"\0")
    return h.hexdigest()[:16]


def prepare_data(cfg: DataConfig, log: Callable[[str], None] = print, progress: bool = True) -> TokenData:
    """Load the token cache for this corpus and these settings, building it if needed."""
    from filelock import FileLock

    docs = load_documents(cfg)
    key = cache_key(docs, cfg)
    root = Path(cfg.cache_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"data.cache_dir: cannot create '{root}' ({e.strerror}); set data.cache_dir to a writable folder") from None
    cache = root / f"{cfg.name}-{key}"
    with FileLock(str(root / f".{cfg.name}-{key}.lock")):  # parallel jobs of a sweep share caches
        meta = _complete_cache_meta(cache)
        if meta is not None:
            log(f"data: reusing token cache {cache} ({meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens)")
        else:
            if cache.exists():
                log(f"data: token cache {cache} is incomplete (an interrupted preparation?); rebuilding it")
            meta = _build_cache(docs, cfg, cache, log, progress)
    dtype = np.dtype(meta["dtype"])
    return TokenData(
        train=np.memmap(cache / "train.bin", dtype=dtype, mode="r"),
        val=np.memmap(cache / "val.bin", dtype=dtype, mode="r"),
        tokenizer=load_tokenizer(cache / "tokenizer.json"),
        meta=meta,
        cache_dir=cache,
    )


def _complete_cache_meta(cache: Path) -> dict | None:
    """The cache's meta.json if the cache is whole, else None."""
    try:
        meta = json.loads((cache / "meta.json").read_text())
        itemsize = np.dtype(meta["dtype"]).itemsize
        for split in ("train", "val"):
            if (cache / f"{split}.bin").stat().st_size != meta[f"{split}_tokens"] * itemsize:
                return None
        if not (cache / "tokenizer.json").is_file() or meta.get("format") != CACHE_FORMAT:
            return None
        return meta
    except (OSError, ValueError, KeyError):
        return None


def _build_cache(docs: list[Document], cfg: DataConfig, cache: Path, log, progress: bool) -> dict:
    import datasets

    if not progress:
        datasets.disable_progress_bars()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "meta.json").unlink(missing_ok=True)  # from here on the cache is incomplete
    t0 = time.time()
    train_docs, val_docs = split_documents(docs, cfg.val_fraction, cfg.split_seed)
    log(f"data: {len(docs)} documents ({sum(len(d.text) for d in docs):,} characters): "
        f"{len(train_docs)} for training, {len(val_docs)} for validation")

    if cfg.tokenizer == "bpe":
        t = time.time()
        tokenizer = BPETokenizer.train((d.text for d in train_docs), cfg.vocab_size, show_progress=progress)
        log(f"data: trained a byte-level BPE tokenizer of {tokenizer.vocab_size} tokens in {time.time() - t:.1f}s")
    else:
        tokenizer = ByteTokenizer()
    _atomic_write(cache / "tokenizer.json", lambda p: tokenizer.save(p))

    dtype = token_dtype(tokenizer.vocab_size)
    counts = {}
    for split, split_docs in (("train", train_docs), ("val", val_docs)):
        ids = _tokenize(split_docs, tokenizer, split, key=cache.name)
        _atomic_write(cache / f"{split}.bin", lambda p: ids.astype(dtype).tofile(p))
        counts[split] = ids
    val = counts["val"]
    meta = dict(
        format=CACHE_FORMAT,
        name=cfg.name,
        source=cfg.source,
        tokenizer=tokenizer.kind,
        vocab_size=tokenizer.vocab_size,
        eot_id=tokenizer.eot_id,
        dtype=np.dtype(dtype).name,
        train_docs=len(train_docs),
        val_docs=len(val_docs),
        train_tokens=int(len(counts["train"])),
        val_tokens=int(len(val)),
        characters=int(sum(len(d.text) for d in docs)),
        unigram_entropy_val=unigram_entropy(val, tokenizer.vocab_size),
        seconds=round(time.time() - t0, 2),
    )
    _atomic_write(cache / "meta.json", lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    log(f"data: wrote token cache {cache}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens "
        f"in {meta['seconds']}s")
    return meta


def _tokenize(docs: list[Document], tokenizer, split: str, key: str) -> np.ndarray:
    """Token ids of all documents, each followed by end-of-text, as one array."""
    import datasets

    table = datasets.Dataset.from_dict({"text": [d.text for d in docs]})
    table = table.map(
        lambda batch: {"ids": tokenizer.encode_batch(batch["text"])},
        batched=True,
        batch_size=32,
        remove_columns=["text"],
        desc=f"tokenizing {split}",
        new_fingerprint=f"{key}-{split}",  # the cache key already identifies this work
    )
    pieces = []
    eot = np.array([tokenizer.eot_id], dtype=np.int64)
    for ids in table.with_format("numpy")["ids"]:
        pieces.append(np.asarray(ids, dtype=np.int64))
        pieces.append(eot)
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file, flushed to disk and renamed, so neither a crash nor a power
    cut leaves half a file (minigpt/files.py)."""
    tmp = path.with_name(path.name + ".tmp")
    write(str(tmp))
    replace_durably(tmp, path)


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy (nats) of the token frequencies: the loss of the best context-free model."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# --- batches ------------------------------------------------------------------------------


class Batches:
    """Random windows of a token array as (inputs, targets) micro-batches.

    The windows of optimizer step `step` come from one random stream seeded by (seed, step);
    micro-batch `index` takes windows index*B .. (index+1)*B - 1 of it. So a step's data does
    not depend on how its global batch is cut: 8 micro-batches of 1 see exactly the windows of
    1 micro-batch of 8, data-parallel ranks take disjoint slices of one global batch, and a
    resumed run draws what it would have drawn, with nothing to carry between calls.
    """

    TRAIN, EVAL = 0, 1

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int,
                 device: torch.device, split: str = "train"):
        if len(tokens) < block_size + 1:
            raise UserError(
                f"data: the {split} split has {len(tokens)} tokens, fewer than one context window "
                f"(model.block_size={block_size} plus 1); use a larger corpus or a smaller model.block_size"
            )
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.seed, self.device = seed, device
        self._offsets = np.arange(block_size + 1)

    def train_batch(self, step: int, index: int):
        return self._windows(np.random.default_rng([self.seed, self.TRAIN, step]), index)

    def eval_batch(self, index: int):
        # The same windows at every evaluation, so successive val losses are comparable.
        return self._windows(np.random.default_rng([self.seed, self.EVAL]), index)

    def _windows(self, rng: np.random.Generator, index: int):
        # Bounded integers are drawn one after another, so the first k of n draws are the k draws.
        starts = rng.integers(0, len(self.tokens) - self.block_size, size=(index + 1) * self.batch_size)
        starts = starts[index * self.batch_size:]
        chunk = torch.from_numpy(self.tokens[starts[:, None] + self._offsets].astype(np.int64))
        if self.device.type == "cuda":
            # Pinned memory lets the copy run asynchronously while the GPU works on the last batch.
            chunk = chunk.pin_memory().to(self.device, non_blocking=True)
        return chunk[:, :-1], chunk[:, 1:]
