"""Data: what a training batch is made of, whatever its source. `load_data(name)` returns the
source behind --data: the embedded Shakespeare plays, your text files or OpenWebText (a TokenStream
of a corpus prepared on disk, corpora/corpus.py), or the synthetic Markov source with exact log p(x)
(corpora/markov.py). Every source has `batch(split, n, seq_len, generator)` and `meta()`, the
vocabulary mapping every checkpoint carries so that its tokenizer can be rebuilt.

Small corpora use a compacted vocabulary (the most frequent GPT-2 tokens, plus EOS and an
unknown token) so that CPU models stay small (corpora/gpt2.py).
"""
import hashlib
from pathlib import Path

import numpy as np
import torch

from corpora import corpus, gpt2
from corpora.gpt2 import GPT2_EOS, Tokenizer
from corpora.markov import MarkovSource, SymbolTokenizer


class TokenStream:
    """A tokenized corpus, split into a train and a val stream. Batches are L-token blocks of
    the stream (MDLM) or, under the first release's split, windows at any offset (nanoGPT)."""

    def __init__(self, folder):
        meta, self.splits = corpus.open_stream(folder)
        self.tokenizer = Tokenizer.from_meta(meta)
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


def load_data(name, vocab_size=4096, seq_len=128):
    """The dataset behind --data: shakespeare, synthetic, openwebtext, or text file path(s)
    separated by commas (.jsonl: one {"text": ...} document a line)."""
    if name == "synthetic":
        return MarkovSource(seq_len=seq_len)
    if name == "shakespeare":
        return TokenStream(corpus.prepare_corpus("shakespeare", corpus.shakespeare_texts(), vocab_size, split="tails"))
    if name == "openwebtext":
        folder = gpt2.DATA_DIR / "openwebtext" / f"v{GPT2_EOS + 1}-stream"  # downloaded only when not prepared
        num_proc = corpus.default_num_proc()
        documents = () if (folder / "meta.json").exists() else corpus.openwebtext_texts(num_proc)
        return TokenStream(corpus.prepare_corpus("openwebtext", documents, GPT2_EOS + 1, num_proc))
    paths = [Path(p) for p in name.split(",")]
    for p in paths:
        if not p.is_file():
            raise ValueError(f"--data {name!r}: not shakespeare, synthetic, openwebtext or a text file ({p} not found)")
    key = "text-" + hashlib.sha1("\n".join(str(p.resolve()) for p in paths).encode()).hexdigest()[:12]
    stream = TokenStream(corpus.prepare_corpus(key, corpus.file_documents(paths), vocab_size,
                                               sources=corpus.fingerprint(paths)))
    if len(stream.splits["train"]) <= seq_len:
        raise ValueError(f"--data {name}: its train split has {len(stream.splits['train'])} tokens, too few for "
                         f"L = {seq_len} (give more text, or a smaller --seq-len)")
    return stream


def tokenizer_from_meta(meta):
    """Rebuild the tokenizer a checkpoint was trained with."""
    if meta["kind"] == "synthetic":
        return SymbolTokenizer(meta["vocab_size"])
    if meta["kind"] != "gpt2":
        raise ValueError(f"this model's vocabulary of {meta.get('vocab_size')} tokens is not GPT-2's: no tokenizer for it")
    return Tokenizer.from_meta(meta)


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
