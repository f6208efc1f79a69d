"""Data: corpus -> train/validation split -> tokenizer -> token cache -> batches.

Preparation streams the corpus (minigpt/data/corpus.py) and never holds it in memory: a first pass
measures every document (its length and folder), which decides the split; a second feeds a
bounded sample of the training documents to the BPE trainer (`data.tokenizer_train_chars`); a
third tokenizes in batches of pieces on all cores and appends 16-bit ids to the token files.
Memory stays flat in the corpus size: a few MB of text and its ids at a time, plus a few
bytes per document.

Prepared tokens live in `<cache_dir>/<name>-<key>/`. The key covers the settings that decide
the tokens and the corpus' fingerprint: every file's name, size and modification time
(`data.cache_key=stat`, the default, cheap at start-up), or a hash of every document's text
(`data.cache_key=content`). A second run with the same inputs reuses the cache after cheap
checks (file sizes, the tokenizer parses, every id inside the vocabulary) and says so; a cache
an interrupted or damaged run left behind is rebuilt.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import stat
import re
import shutil
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from minigpt.config import DataConfig
from minigpt.data.corpus import (Document, check_hub_reachable, corpus_fingerprint, empty_corpus, iter_documents,
                                 stratum)
from minigpt.errors import UserError
from minigpt.files import file_sha256, not_followed, open_new, replace_durably, write_atomic
from minigpt.data.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer, token_dtype

# The tokens of a given corpus and settings are those of format 2 (the first streaming version
# gives the same ids); only the key that names the cache directory changed.
CACHE_FORMAT = 2
PIECE_CHARS = 1 << 16  # longest text handed to the tokenizer at once
BATCH_CHARS = 1 << 21  # characters tokenized per batch (spread over the tokenizer's threads)
SCAN_TOKENS = 1 << 24  # ids checked at a time when a cache is validated
# Token files up to this size are hashed whole at every reuse (the default corpus' 7 MB took
# 0.06 s on the shared 2-core CPU); larger ones are checked on SAMPLE_BLOCKS blocks of
# SAMPLE_BYTES spread over each file, and hashed whole at every resume (verify_tokens).
FULL_HASH_BYTES = 64 << 20
SAMPLE_BLOCKS = 16
SAMPLE_BYTES = 1 << 16


@dataclass
class TokenData:
    train: np.ndarray  # memory-mapped token ids, documents separated by end-of-text
    val: np.ndarray
    tokenizer: BPETokenizer | ByteTokenizer
    meta: dict
    cache_dir: Path


# --- pieces -------------------------------------------------------------------------------

# A byte-level BPE pre-tokenizer (GPT-2's pattern) always ends a pre-token between a
# non-space character and a following space or newline: no pattern matches text followed by
# whitespace. Merges never cross pre-tokens, so text cut there tokenizes, piece by piece, to the
# ids of the whole. (Python's \S excludes at least Unicode's White_Space, so a cut found with
# it is a cut for the tokenizer's regex too.)
_CUT = re.compile(r"\S(?=[ \n])")


def pieces(chunks: Iterable[str], size: int | None = None) -> Iterator[str]:
    """The text of `chunks` in pieces of at most `size` characters, cut where tokens cannot span.

    Joining the pieces gives the text back. A stretch of `size` characters without a space or
    newline after a non-space character (a base64 blob, say) is cut at `size` itself: only
    there can the tokens of the pieces differ from those of the whole."""
    size = size or PIECE_CHARS
    buf, pos = "", 0
    for chunk in chunks:
        buf = buf[pos:] + chunk
        pos = 0
        while len(buf) - pos > size:
            cut = _cut_point(buf, pos, pos + size)
            yield buf[pos:cut]
            pos = cut
    if pos < len(buf):
        yield buf[pos:]


def _cut_point(text: str, lo: int, hi: int) -> int:
    """The last position c in (lo, hi] with a non-space at c-1 and a space or newline at c."""
    for start in (max(lo, hi - 4096), lo):
        last = None
        for last in _CUT.finditer(text, start, hi + 1):
            pass
        if last is not None and last.end() > lo:
            return last.end()
    return hi


# --- survey and split -----------------------------------------------------------------------


@dataclass
class Survey:
    """What the first pass learned: which documents count, how long they are, their folders."""
    positions: np.ndarray  # index in iter_documents() of every non-empty document kept
    id_hashes: np.ndarray  # a 64-bit hash of its id: the later passes check they read the same documents
    lengths: np.ndarray  # its characters (the last one cut short by data.max_chars)
    strata: np.ndarray  # the rank of its folder among all folders, in sorted order
    characters: int


def survey(cfg: DataConfig, progress: bool = False) -> Survey:
    """Read every document once: drop empty ones, apply data.max_chars, note lengths and folders."""
    from tqdm import tqdm

    positions, lengths, folder_codes, id_hashes = array("q"), array("q"), array("q"), array("q")
    folders: dict[str, int] = {}
    total = 0
    with tqdm(desc="data: reading", unit="char", unit_scale=True, disable=not progress, mininterval=1) as bar:
        for i, doc in enumerate(iter_documents(cfg)):
            if cfg.max_chars and total >= cfg.max_chars:
                break
            n, has_text = 0, False
            for chunk in doc.chunks():
                n += len(chunk)
                has_text = has_text or not chunk.isspace()
            bar.update(n)
            if not has_text:
                continue
            if cfg.max_chars:
                n = min(n, cfg.max_chars - total)
            positions.append(i)
            id_hashes.append(_id_hash(doc.id))
            lengths.append(n)
            folder_codes.append(folders.setdefault(stratum(doc.id), len(folders)))
            total += n
    if not positions:
        raise empty_corpus(cfg)
    rank_of_code = np.empty(len(folders), dtype=np.int64)
    for rank, name in enumerate(sorted(folders)):
        rank_of_code[folders[name]] = rank
    return Survey(np.frombuffer(positions, dtype=np.int64), np.frombuffer(id_hashes, dtype=np.int64),
                  np.frombuffer(lengths, dtype=np.int64),
                  rank_of_code[np.frombuffer(folder_codes, dtype=np.int64)],
                  total)


def _id_hash(doc_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(doc_id.encode("utf-8", errors="replace"), digest_size=8).digest(), "little",
                          signed=True)


class CorpusChanged(UserError):
    """Files of the corpus were added, removed or changed while it was being prepared."""


def corpus_changed(cfg: DataConfig, what: str) -> CorpusChanged:
    return CorpusChanged(f"data: the corpus changed while it was being prepared ({what}); the token cache was not "
                         "completed (a file added, deleted or edited during preparation would shift or mix the "
                         "documents of the split): run again once the corpus files stay put")


def validation_mask(strata: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Which documents go to validation: a seeded choice, the same on every machine.

    Stratified systematic sampling: documents are ordered by folder (their stratum), shuffled
    within it, and every 1/val_fraction-th one (from a random offset) goes to validation. The
    validation split then mirrors the corpus' mix of folders: in the stdlib corpus a plain random
    5% can land on a cluster of generated data tables (encodings/, html/entities.py) and read
    0.5 nats harder than the rest; stratified, the spread between seeds is half as wide.
    It needs only each document's folder rank: a few bytes per document.
    """
    n = len(strata)
    rng = np.random.default_rng(seed)
    shuffle_keys = rng.random(n)
    order = np.lexsort((shuffle_keys, strata))  # by folder, then by key; stable
    n_val = min(max(1, round(val_fraction * n)), n - 1)
    picks = np.floor((rng.random() + np.arange(n_val)) * n / n_val).astype(int)
    mask = np.zeros(n, dtype=bool)
    mask[order[picks]] = True
    return mask


def split_documents(docs: list[Document], val_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    """The split of an in-memory list of documents (see validation_mask and single_document_cut)."""
    if len(docs) == 1:
        text = docs[0].read()
        cut = single_document_cut([text], len(text), val_fraction)
        return [Document(docs[0].id + "#train", text[:cut])], [Document(docs[0].id + "#val", text[cut:])]
    names = [stratum(d.id) for d in docs]
    rank = {name: r for r, name in enumerate(sorted(set(names)))}
    mask = validation_mask(np.array([rank[n] for n in names], dtype=np.int64), val_fraction, seed)
    return [d for d, v in zip(docs, mask) if not v], [d for d, v in zip(docs, mask) if v]


def single_document_cut(chunks: Iterable[str], length: int, val_fraction: float) -> int:
    """A corpus of one document (one big text file) cannot be split by document: it is cut
    after the last line break before the validation fraction, the tail going to validation."""
    target = int(length * (1 - val_fraction))
    last, offset = -1, 0
    for chunk in chunks:
        if offset >= target:
            break
        found = chunk.rfind("\n", 0, target - offset)
        if found >= 0:
            last = offset + found
        offset += len(chunk)
    return last + 1 if last > 0 else target


@dataclass
class Part:
    """A stretch of one document that goes to one split."""
    doc: Document
    start: int
    end: int
    split: str

    def chunks(self, end: int | None = None) -> Iterator[str]:
        """The characters start..end (default: the part's end) in consecutive pieces."""
        end = self.end if end is None else end
        offset = 0
        for chunk in self.doc.chunks():
            lo, hi = max(self.start - offset, 0), min(end - offset, len(chunk))
            if lo < hi:
                yield chunk[lo:hi]
            offset += len(chunk)
            if offset >= end:
                return


def plan_parts(cfg: DataConfig, found: Survey, val: np.ndarray, single_cut: int | None) -> Iterator[Part]:
    """Stream the kept documents again, as parts assigned to train or val, in corpus order."""
    k = 0
    for i, doc in enumerate(iter_documents(cfg)):
        if k == len(found.positions):
            return
        if i != found.positions[k]:
            continue
        if _id_hash(doc.id) != found.id_hashes[k]:  # files listed again: one added or deleted since the survey
            raise corpus_changed(cfg, f"the document read in place {k} is '{doc.id}', not the one the first pass read "
                                      "there")
        length = int(found.lengths[k])
        if single_cut is not None:
            yield Part(doc, 0, single_cut, "train")
            yield Part(doc, single_cut, length, "val")
        else:
            yield Part(doc, 0, length, "val" if val[k] else "train")
        k += 1


# --- cache --------------------------------------------------------------------------------


def cache_key(cfg: DataConfig) -> str:
    """A hash of the corpus' fingerprint and every setting that decides the cached tokens."""
    settings = dict(format=CACHE_FORMAT, source=cfg.source, tokenizer=cfg.tokenizer, val_fraction=cfg.val_fraction,
                    split_seed=cfg.split_seed, max_chars=cfg.max_chars, key=cfg.cache_key,
                    text_field=cfg.text_field if cfg.source != "stdlib" else None,
                    vocab_size=cfg.vocab_size if cfg.tokenizer == "bpe" else None,
                    tokenizer_train_chars=cfg.tokenizer_train_chars if cfg.tokenizer == "bpe" else None)
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    h.update(corpus_fingerprint(cfg, content=cfg.cache_key == "content").encode())
    return h.hexdigest()[:16]


def prepare_data(cfg: DataConfig, log: Callable[[str], None] = print, progress: bool = True,
                 check_hub: bool = True) -> TokenData:
    """Load the token cache for this corpus and these settings, building it if needed.
    check_hub=False skips the hub's reachability check (tests that stand in for the hub)."""
    if check_hub:
        check_hub_data(cfg)  # offline without a token cache: one line at once
    with _datasets_progress(progress if cfg.source == "hub" else None):
        key = cache_key(cfg)
        root = Path(cfg.cache_dir)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"data.cache_dir: cannot create '{root}' ({e.strerror}); "
                            "set data.cache_dir to a writable folder") from None
        cache = root / f"{cfg.name}-{key}"
        with cache_lock(root / f".{cfg.name}-{key}.lock") as locked:  # parallel jobs of a sweep share caches
            meta, tokenizer, problem = check_cache(cache)
            if meta is not None:
                log(f"data: reusing token cache {cache} ({meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens)"
                    + ("" if locked else ", read-only"))
            elif not locked:
                raise UserError(f"data.cache_dir: '{root}' cannot be written (read-only?), and the token cache this run "
                                f"needs, {cache.name}, {'is missing' if not cache.exists() else problem}; "
                                "prepare it where data.cache_dir is writable, or point data.cache_dir elsewhere")
            else:
                if cache.exists():
                    log(f"data: token cache {cache} {problem}; rebuilding it")
                # The files' names, sizes and times before and after: a change in between (a file
                # added, deleted or edited during the minutes of preparation) would leave tokens
                # that match neither the key computed before nor the corpus after.
                stamp = corpus_fingerprint(cfg, content=False) if cfg.source != "hub" else None
                try:
                    meta = _build_cache(cfg, cache, log, progress)
                except FileNotFoundError as e:  # listed, then deleted before it was read
                    raise corpus_changed(cfg, f"'{e.filename}' was deleted") from None
                except Exception:
                    # A preparation that failed (a download, a bad row) leaves nothing the next run
                    # would take for an interrupted one; a stop signal (not an Exception) leaves it.
                    shutil.rmtree(cache, ignore_errors=True)
                    raise
                if stamp is not None and corpus_fingerprint(cfg, content=False) != stamp:
                    (cache / "meta.json").unlink(missing_ok=True)  # incomplete: the next start rebuilds it
                    raise corpus_changed(cfg, "a file's name, size or modification time differs from before")
                tokenizer = load_tokenizer(cache / "tokenizer.json")
    dtype = np.dtype(meta["dtype"])
    return TokenData(
        train=np.memmap(cache / "train.bin", dtype=dtype, mode="r"),
        val=np.memmap(cache / "val.bin", dtype=dtype, mode="r"),
        tokenizer=tokenizer,
        meta=meta,
        cache_dir=cache,
    )


def check_hub_data(cfg: DataConfig) -> None:
    """For the precheck: a hub dataset without a token cache here must be reachable (one line at
    once if not: corpus.check_hub_reachable); one whose cache is built needs no network."""
    if cfg.source != "hub":
        return
    if check_cache(Path(cfg.cache_dir) / f"{cfg.name}-{cache_key(cfg)}")[0] is None:
        check_hub_reachable(cfg)


@contextlib.contextmanager
def cache_lock(path: Path):
    """An exclusive flock on a cache's lock file for the block; yields True, or False when the
    folder cannot be written (a read-only mount, no permission): a complete cache is then read
    without a lock (nobody can write it either), and a missing one is refused by the caller. The
    lock file is opened without following a link (minigpt/files.py): a link planted under its
    name was truncated through."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            yield False
            return
        raise not_followed(path, e) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise not_followed(path, OSError(errno.EINVAL, "not a regular file"))
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits for another job preparing the same cache
        yield True
    finally:
        os.close(fd)  # drops the lock


def complete_cache(cfg: DataConfig) -> bool:
    """Whether data.cache_dir already holds a finished token cache for this config (for a
    read-only data.cache_dir, which can serve a run only then). Cheap for data.cache_key=stat;
    a content key reads the whole corpus, so it is not computed here (False)."""
    if cfg.cache_key == "content" or cfg.source == "hub":
        return False
    try:
        return (Path(cfg.cache_dir) / f"{cfg.name}-{cache_key(cfg)}" / "meta.json").is_file()
    except (OSError, UserError):
        return False


@contextlib.contextmanager
def _datasets_progress(show: bool | None):
    """Turn the datasets / hub progress bars off for the block when show is False."""
    if show is None or show:
        yield
        return
    import datasets

    was_off = datasets.is_progress_bar_enabled() is False
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            datasets.enable_progress_bars()


def check_cache(cache: Path) -> tuple[dict | None, BPETokenizer | ByteTokenizer | None, str]:
    """(meta, tokenizer, "") for a whole and sound cache, else (None, None, what is wrong).

    Cheap enough for every start: file sizes against meta.json, the tokenizer parses and has
    the recorded vocabulary, every id is inside it, and the token files' content matches the
    SHA-256 hashes meta.json recorded (verify_tokens: whole files up to FULL_HASH_BYTES,
    sampled blocks above). The ids are scanned (one pass over the memory-mapped file) only
    when a token file's size or modification time differs from what the preparation recorded.
    Only real damage is reported: an ImportError or MemoryError of this process is raised,
    so that a healthy shared cache is not rebuilt for it."""
    try:
        meta = json.loads((cache / "meta.json").read_text())
        itemsize = np.dtype(meta["dtype"]).itemsize
        if meta.get("format") != CACHE_FORMAT:
            return None, None, f"has format {meta.get('format')}, not {CACHE_FORMAT}"
        for split in ("train", "val"):
            if (cache / f"{split}.bin").stat().st_size != meta[f"{split}_tokens"] * itemsize:
                return None, None, "is incomplete (an interrupted preparation?)"
        if not (cache / "tokenizer.json").is_file():
            return None, None, "is incomplete (an interrupted preparation?)"
    except (OSError, ValueError, KeyError, TypeError):
        return None, None, "is incomplete (an interrupted preparation?)"
    try:
        tokenizer = load_tokenizer(cache / "tokenizer.json")
    except (ImportError, MemoryError):
        raise  # this process' trouble, not the cache's: a shared cache must not be rebuilt for it
    except OSError as e:
        raise UserError(f"data.cache_dir: cannot read '{cache / 'tokenizer.json'}' ({e.strerror}); fix its "
                        "permissions, or point data.cache_dir elsewhere") from None
    except Exception as e:  # the tokenizers library raises a bare Exception for a file it cannot parse
        return None, None, f"is damaged: its tokenizer.json does not load ({type(e).__name__})"
    if tokenizer.vocab_size != meta["vocab_size"]:
        return None, None, f"is damaged: its tokenizer has {tokenizer.vocab_size} tokens, meta.json says {meta['vocab_size']}"
    for split in ("train", "val"):
        path = cache / f"{split}.bin"
        if not meta[f"{split}_tokens"] or meta.get("files", {}).get(path.name) == _file_stamp(path):
            continue
        ids = np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
        top = max(int(ids[i:i + SCAN_TOKENS].max()) for i in range(0, len(ids), SCAN_TOKENS))
        if top >= tokenizer.vocab_size:
            return None, None, f"is damaged: {split}.bin holds id {top}, outside the vocabulary of {tokenizer.vocab_size}"
    if not isinstance(meta.get("sha256"), dict):
        return None, None, "has no hash of its token files (written before minigpt recorded one)"
    size = sum((cache / f"{split}.bin").stat().st_size for split in ("train", "val"))
    try:
        changed = verify_tokens(cache, meta, full=size <= FULL_HASH_BYTES)
    except (OSError, TypeError, ValueError) as e:  # an unreadable file, or hashes that are not [offset, hex] pairs
        changed = f"its token files cannot be checked ({type(e).__name__})"
    if changed:
        return None, None, f"is damaged: {changed}"
    return meta, tokenizer, ""


def verify_tokens(cache: Path, meta: dict, full: bool = True) -> str:
    """What differs between the token files and the hashes meta.json recorded when they were
    written ("" when nothing): the whole files' SHA-256 (full=True), or the sampled blocks'.
    Ids changed to other valid ids pass every other check and would be trained on silently."""
    for name in ("train.bin", "val.bin"):
        path = cache / name
        if full:
            if file_sha256(path) != meta["sha256"].get(name):
                return f"{name} differs from the SHA-256 meta.json recorded when it was written"
            continue
        for offset, digest in meta.get("blocks", {}).get(name, []):
            if _block_sha256(path, offset) != digest:
                return f"{name} differs, at byte {offset}, from the hashes meta.json recorded when it was written"
    return ""


def _block_sha256(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return hashlib.sha256(f.read(SAMPLE_BYTES)).hexdigest()


def _sample_blocks(path: Path) -> list[list]:
    """(offset, SHA-256) of SAMPLE_BLOCKS blocks spread over a file, the first and last included."""
    size = path.stat().st_size
    last = max(0, size - SAMPLE_BYTES)
    offsets = sorted({last * i // (SAMPLE_BLOCKS - 1) for i in range(SAMPLE_BLOCKS)})
    return [[offset, _block_sha256(path, offset)] for offset in offsets]


def _file_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _build_cache(cfg: DataConfig, cache: Path, log, progress: bool) -> dict:
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "meta.json").unlink(missing_ok=True)  # from here on the cache is incomplete
    t0 = time.time()

    found = survey(cfg, progress)
    n = len(found.positions)
    single_cut = None
    if n == 1:
        only = next(plan_parts(cfg, found, np.zeros(1, bool), 0)).doc
        single_cut = single_document_cut(Part(only, 0, int(found.lengths[0]), "train").chunks(),
                                         int(found.lengths[0]), cfg.val_fraction)
        val = np.zeros(1, dtype=bool)
        n_train, n_val = 1, 1
        train_chars = single_cut
    else:
        val = validation_mask(found.strata, cfg.val_fraction, cfg.split_seed)
        n_val = int(val.sum())
        n_train = n - n_val
        train_chars = int(found.lengths[~val].sum())
    read_s = time.time() - t0
    log(f"data: {n} documents ({found.characters:,} characters, read in {read_s:.1f}s): "
        f"{n_train} for training, {n_val} for validation")

    t = time.time()
    if cfg.tokenizer == "bpe":
        share = min(1.0, cfg.tokenizer_train_chars / max(train_chars, 1))
        sample_chars = [0]

        def sample() -> Iterator[str]:
            # The same share of every training document (its beginning), so the sample spreads
            # over the whole corpus; with share 1 it is the whole training split.
            from tqdm import tqdm

            with tqdm(total=min(train_chars, cfg.tokenizer_train_chars), desc="data: BPE sample", unit="char",
                      unit_scale=True, disable=not progress, mininterval=1) as bar:
                for part in plan_parts(cfg, found, val, single_cut):
                    if part.split == "train":
                        take = part.start + math.ceil(share * (part.end - part.start))
                        for piece in pieces(part.chunks(take)):
                            sample_chars[0] += len(piece)
                            bar.update(len(piece))
                            yield piece

        tokenizer = BPETokenizer.train(sample(), cfg.vocab_size, show_progress=progress)
        log(f"data: trained a byte-level BPE tokenizer of {tokenizer.vocab_size} tokens on {sample_chars[0]:,} "
            f"characters ({share:.0%} of the training split; data.tokenizer_train_chars={cfg.tokenizer_train_chars:,}) "
            f"in {time.time() - t:.1f}s")
    else:
        tokenizer, sample_chars = ByteTokenizer(), [0]
    write_atomic(cache / "tokenizer.json", tokenizer.to_json())
    tokenizer_s = time.time() - t

    t = time.time()
    dtype = token_dtype(tokenizer.vocab_size)
    counts = _write_tokens(plan_parts(cfg, found, val, single_cut), tokenizer, cache, dtype, found.characters, progress)
    tokenize_s = time.time() - t
    engine = "tiktoken" if getattr(tokenizer, "uses_tiktoken", False) else tokenizer.kind == "bpe" and "tokenizers"
    log(f"data: tokenized {found.characters:,} characters in {tokenize_s:.1f}s "
        f"({found.characters / max(tokenize_s, 1e-9) / 1e6:.2f}M characters/s)" + (f" with {engine}" if engine else ""))
    val_counts = counts.pop("val_unigrams")
    meta = dict(
        format=CACHE_FORMAT,
        name=cfg.name,
        source=cfg.source,
        tokenizer=tokenizer.kind,
        vocab_size=tokenizer.vocab_size,
        eot_id=tokenizer.eot_id,
        dtype=np.dtype(dtype).name,
        train_docs=n_train,
        val_docs=n_val,
        train_tokens=counts["train"],
        val_tokens=counts["val"],
        characters=found.characters,
        tokenizer_train_chars=sample_chars[0],
        cache_key=cfg.cache_key,
        unigram_entropy_val=_entropy_of_counts(val_counts),
        seconds=round(time.time() - t0, 2),
        files={name: _file_stamp(cache / name) for name in ("train.bin", "val.bin")},  # see check_cache
        sha256=counts["sha256"],  # of each token file, hashed as it was written: verify_tokens
        blocks={name: _sample_blocks(cache / name) for name in ("train.bin", "val.bin")},
        stage_seconds=dict(read=round(read_s, 2), tokenizer=round(tokenizer_s, 2), tokenize=round(tokenize_s, 2)),
    )
    write_atomic(cache / "meta.json", json.dumps(meta, indent=2))
    log(f"data: wrote token cache {cache}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens "
        f"in {meta['seconds']}s ({found.characters / max(meta['seconds'], 1e-9) / 1e6:.2f}M characters/s overall)")
    return meta


def _write_tokens(parts: Iterator[Part], tokenizer, cache: Path, dtype, total_chars: int, progress: bool) -> dict:
    """Tokenize the parts in batches and append each split's ids (each part followed by
    end-of-text) to its file; the files are renamed into place only when complete."""
    from tqdm import tqdm

    counts = {"train": 0, "val": 0}
    hashes = {split: hashlib.sha256() for split in counts}
    val_unigrams = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    tmp = {split: cache / f"{split}.bin.tmp" for split in counts}
    eot = np.array([tokenizer.eot_id], dtype=dtype)
    files = {split: open_new(path) for split, path in tmp.items()}  # never through a link (minigpt/files.py)
    try:
        with tqdm(total=total_chars, desc="data: tokenizing", unit="char", unit_scale=True,
                  disable=not progress, mininterval=1) as bar:
            batch: list[tuple[str, str | None]] = []  # (split, text); None marks an end-of-text
            batch_chars = 0

            first = [True]

            def flush():
                texts = [text for _, text in batch if text is not None]
                encoded = iter(tokenizer.encode_arrays(texts, dtype, check=first[0]))  # see encode_arrays
                first[0] = False
                out = {"train": [], "val": []}
                for split, text in batch:
                    out[split].append(eot if text is None else next(encoded))
                for split, arrays in out.items():
                    if arrays:
                        ids = np.concatenate(arrays)
                        ids.tofile(files[split])
                        hashes[split].update(ids.tobytes())
                        counts[split] += len(ids)
                        if split == "val":
                            val_unigrams[:] += np.bincount(ids, minlength=tokenizer.vocab_size)
                bar.update(sum(len(text) for text in texts))
                batch.clear()

            for part in parts:
                for piece in pieces(part.chunks()):
                    batch.append((part.split, piece))
                    batch_chars += len(piece)
                    if batch_chars >= BATCH_CHARS:
                        flush()
                        batch_chars = 0
                batch.append((part.split, None))
            flush()
    finally:
        for f in files.values():
            f.close()
    for split, path in tmp.items():
        replace_durably(path, cache / f"{split}.bin")
    return {**counts, "val_unigrams": val_unigrams,
            "sha256": {f"{split}.bin": h.hexdigest() for split, h in hashes.items()}}


def _entropy_of_counts(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy (nats) of the token frequencies: the loss of the best context-free model."""
    return _entropy_of_counts(np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size))


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
                 device: torch.device, split: str = "train", vocab_size: int | None = None):
        if len(tokens) < block_size + 1:
            raise UserError(
                f"data: the {split} split has {len(tokens)} tokens, fewer than one context window "
                f"(model.block_size={block_size} plus 1); use a larger corpus or a smaller model.block_size"
            )
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.seed, self.device = seed, device
        self.split, self.vocab_size = split, vocab_size  # ids at or above vocab_size are refused
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
        ids = self.tokens[starts[:, None] + self._offsets]
        if self.vocab_size is not None and ids.max() >= self.vocab_size:
            # A token file changed after its checks (or under a running job): an id past the
            # embedding would end the run in an IndexError deep in the model.
            raise UserError(f"data: the {self.split} split holds id {int(ids.max())}, outside the vocabulary of "
                            f"{self.vocab_size}: its token file changed after it was checked; delete the token cache "
                            "to rebuild it")
        chunk = torch.from_numpy(ids.astype(np.int64))
        if self.device.type == "cuda":
            # Pinned memory lets the copy run asynchronously while the GPU works on the last batch.
            chunk = chunk.pin_memory().to(self.device, non_blocking=True)
        return chunk[:, :-1], chunk[:, 1:]
