"""Benchmark data preparation: MB/s and peak memory for corpora of growing size.

    python scripts/bench_data.py                               # 35 MB, 350 MB, 1 GB corpora
    python scripts/bench_data.py --sizes 35 350 --out bench_data.json
    python scripts/bench_data.py --sizes 35 --encoders --entropy 1e6 3e6 1e7 --one-line

Corpora are built under --root (default /tmp/minigpt-bench-data, never in the repository) from
the standard library's .py sources (test suites included): files of about 35 MB, each the
sources concatenated from a different starting file. Each corpus is prepared from scratch in
a fresh process (`prepare_data`, as `python train.py data=files data.paths=[<corpus>]` does)
and then loaded again from its cache; the JSON output gives, per corpus, the wall time, MB/s
(corpus bytes on disk / wall time), the peak resident memory of the process (imports
included), the time of every stage, and the cached start.

--encoders times the ways to tokenize (tokenizers with one or all threads, datasets' map with
num_proc, tiktoken with one or all threads) on the first 20 MB of the smallest corpus,
alternating rounds, and reports medians. --entropy trains the tokenizer on samples of the
standard library corpus and reports the validation unigram entropy for each sample size.
--one-line checks that a one-line corpus file, tokenized in pieces, gives the ids of the whole.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

def stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not {"site-packages", "dist-packages"} & set(p.parts))


def build_corpus(folder: Path, size_mb: int, file_mb: int) -> Path:
    """Files of about file_mb MB made of the stdlib sources, in all size_mb MB (kept for reuse)."""
    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sources = stdlib_sources()
    texts = [p.read_bytes() for p in sources]
    n_files = max(1, round(size_mb / file_mb))
    per_file = size_mb * 10**6 // n_files
    for i in range(n_files):
        written, k = 0, (i * 97) % len(texts)
        with open(folder / f"part{i:03d}.txt", "wb") as f:
            while written < per_file:
                chunk = texts[k % len(texts)][: per_file - written]
                f.write(chunk)
                written += len(chunk)
                k += 1
    done.write_text("")
    return folder


def corpus_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.txt"))


CHILD = r"""
import json, resource, sys, time
t0 = time.time()
from minigpt.config import DataConfig
from minigpt.data.cache import prepare_data
args = json.loads(sys.argv[1])
logs = []
data = prepare_data(DataConfig(**args), log=logs.append, progress=False)
wall = time.time() - t0
print(json.dumps(dict(wall_s=wall, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      meta=data.meta, log=logs)))
"""


def prepare_in_child(config: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    if out.returncode:
        raise SystemExit(f"preparation failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_corpus(root: Path, size_mb: int, file_mb: int) -> dict:
    folder = build_corpus(root / f"stdlib-{size_mb}MB-{file_mb}", size_mb, file_mb)
    cache_dir = root / "cache"
    config = dict(source="files", paths=[str(folder)], name=f"bench{size_mb}", cache_dir=str(cache_dir))
    for old in cache_dir.glob(f"bench{size_mb}-*"):
        shutil.rmtree(old)
    size = corpus_bytes(folder)
    cold = prepare_in_child(config)
    warm = prepare_in_child(config)
    meta = cold["meta"]
    return dict(
        corpus_mb=round(size / 1e6, 1),
        files=len(list(folder.glob("*.txt"))),
        characters=meta["characters"],
        train_tokens=meta["train_tokens"],
        val_tokens=meta["val_tokens"],
        wall_s=round(cold["wall_s"], 1),
        mb_per_s=round(size / 1e6 / cold["wall_s"], 2),
        peak_rss_mb=round(cold["peak_rss_mb"]),
        stage_s=meta.get("stage_seconds"),
        tokenizer_train_chars=meta["tokenizer_train_chars"],
        unigram_entropy_val=round(meta["unigram_entropy_val"], 4),
        cached_start_s=round(warm["wall_s"], 2),
        cached_peak_rss_mb=round(warm["peak_rss_mb"]),
        log=cold["log"],
    )


# --- encoders ---------------------------------------------------------------------------------


def compare_encoders(root: Path, rounds: int, file_mb: int) -> dict:
    """Tokenize the same 20 MB in pieces every way; alternate the ways, report medians (MB/s)."""
    import numpy as np

    from minigpt.data.cache import pieces
    from minigpt.data.tokenizer import BPETokenizer

    folder = build_corpus(root / f"stdlib-{file_mb}MB-{file_mb}", file_mb, file_mb)
    text = (folder / "part000.txt").read_text(errors="replace")[:20_000_000]
    chunks = list(pieces([text]))
    mb = sum(len(c.encode()) for c in chunks) / 1e6
    tok = BPETokenizer.train(iter(chunks), 4096)
    threads = len(os.sched_getaffinity(0))
    batches = [chunks[i:i + 32] for i in range(0, len(chunks), 32)]

    def tokenizers_threads(parallel: bool):
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if parallel else "false"
        return lambda: [tok.backend.encode_batch_fast(b) for b in batches]

    def datasets_map():
        import datasets

        datasets.disable_progress_bars()
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        table = datasets.Dataset.from_dict({"text": chunks})
        table.map(lambda b: {"ids": [e.ids for e in tok.backend.encode_batch_fast(b["text"])]}, batched=True,
                  batch_size=32, num_proc=threads, remove_columns=["text"], new_fingerprint=str(time.time()))

    fast = tok.tiktoken_encoding()
    ways = {
        "tokenizers, 1 thread": tokenizers_threads(False),
        f"tokenizers, {threads} threads (its own batch parallelism)": tokenizers_threads(True),
        f"datasets map, num_proc={threads} (tokenizers inside)": datasets_map,
        "tiktoken, 1 thread": lambda: [fast.encode_ordinary_batch(b, num_threads=1) for b in batches],
        f"tiktoken, {threads} threads": lambda: [fast.encode_ordinary_batch(b, num_threads=threads) for b in batches],
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, run in ways.items():
            if name.startswith("tokenizers"):
                run = tokenizers_threads("threads (" in name)  # set the variable right before the call
            t = time.time()
            run()
            times[name].append(time.time() - t)
    same = all(np.array_equal(a, np.array(e.ids)) for a, e in
               zip(tok.encode_arrays(chunks[:200], np.int64), tok.backend.encode_batch_fast(chunks[:200])))
    return dict(mb=round(mb, 1), rounds=rounds, same_ids=same,
                mb_per_s={name: round(mb / statistics.median(ts), 2) for name, ts in times.items()},
                all_s={name: [round(t, 2) for t in ts] for name, ts in times.items()})


# --- tokenizer sample size ----------------------------------------------------------------------


def entropy_by_sample(budgets: list[int], max_chars: int) -> list[dict]:
    """Validation unigram entropy of the stdlib corpus for tokenizers trained on growing samples."""
    import tempfile

    from minigpt.config import DataConfig
    from minigpt.data.cache import prepare_data

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for budget in budgets:
            t = time.time()
            data = prepare_data(DataConfig(tokenizer_train_chars=int(budget), max_chars=max_chars, cache_dir=tmp),
                                log=lambda m: None, progress=False)
            meta = data.meta
            chars_per_token_val = sum(len(data.tokenizer.decode(data.val[i:i + 100_000]))
                                      for i in range(0, len(data.val), 100_000)) / meta["val_tokens"]
            rows.append(dict(tokenizer_train_chars=int(budget), sampled_chars=meta["tokenizer_train_chars"],
                             unigram_entropy_val=round(meta["unigram_entropy_val"], 4),
                             val_tokens=meta["val_tokens"], chars_per_token_val=round(chars_per_token_val, 3),
                             nats_per_char_val=round(meta["unigram_entropy_val"] / chars_per_token_val, 4),
                             seconds=round(time.time() - t, 1)))
            print(rows[-1], flush=True)
    return rows


# --- one long line ------------------------------------------------------------------------------


def one_line_check(root: Path, file_mb: int) -> dict:
    """A file_mb MB file without a line break, prepared in pieces, against the ids of the whole text."""
    import numpy as np

    from minigpt.config import DataConfig
    from minigpt.data.cache import prepare_data

    folder = root / f"one-line-{file_mb}"
    path = folder / "line.txt"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        corpus = build_corpus(root / f"stdlib-{file_mb}MB-{file_mb}", file_mb, file_mb)
        text = (corpus / "part000.txt").read_text(errors="replace")
        path.write_text(text.replace("\n", " "))
    t = time.time()
    data = prepare_data(DataConfig(source="files", paths=[str(path)], name="oneline", cache_dir=str(root / "cache")),
                        log=lambda m: None, progress=False)
    prepare_s = time.time() - t
    text = path.read_text()
    cut = int(len(text) * 0.95)  # no line break: the split is at the fraction itself
    t = time.time()
    whole = data.tokenizer.backend.encode(text[:cut]).ids  # tokenizers, the whole training part at once
    whole_s = time.time() - t
    same = np.array_equal(np.asarray(data.train[:-1]), np.array(whole))
    return dict(chars=len(text), train_tokens=int(len(data.train)), same_ids_as_whole=bool(same),
                prepare_s=round(prepare_s, 1), whole_encode_s=round(whole_s, 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[35, 350, 1000], help="corpus sizes in MB")
    parser.add_argument("--root", type=Path, default=Path("/tmp/minigpt-bench-data"))
    parser.add_argument("--out", type=Path, default=Path("bench_data.json"))
    parser.add_argument("--encoders", action="store_true", help="compare the ways to tokenize")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--entropy", type=float, nargs="*", default=[], help="tokenizer_train_chars values")
    parser.add_argument("--one-line", action="store_true")
    parser.add_argument("--file-mb", type=int, default=35, help="size of each corpus file (and of the one-line file)")
    parser.add_argument("--max-chars", type=int, default=0, help="--entropy: cut the stdlib corpus to this many characters")
    args = parser.parse_args()

    result = dict(machine=dict(cpus=len(os.sched_getaffinity(0)), platform=platform.platform(),
                               python=platform.python_version()), command=" ".join(sys.argv), corpora=[])
    for size in args.sizes:
        row = bench_corpus(args.root, size, args.file_mb)
        result["corpora"].append(row)
        print({k: v for k, v in row.items() if k != "log"}, flush=True)
    if args.encoders:
        result["encoders"] = compare_encoders(args.root, args.rounds, args.file_mb)
        print(result["encoders"]["mb_per_s"], flush=True)
    if args.entropy:
        result["tokenizer_sample"] = entropy_by_sample(args.entropy, args.max_chars)
    if args.one_line:
        result["one_line"] = one_line_check(args.root, args.file_mb)
        print(result["one_line"], flush=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
