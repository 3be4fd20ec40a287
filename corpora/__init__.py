"""Corpora: where token ids come from. `gpt2.py` is GPT-2's tokenizer offline (and its compacted
vocabulary for small corpora), `corpus.py` prepares a corpus of any size on disk (the embedded
Shakespeare plays, your text files, OpenWebText), `markov.py` is the synthetic source whose exact
log p(x) is known. It imports only diffusion.py (for its float64 draws); data.py, one layer up,
is its front door."""
