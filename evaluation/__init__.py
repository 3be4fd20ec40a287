"""Evaluation beyond the final table, and its commands (run as `python -m evaluation.NAME`):
`sweep.py` (GenPPL and entropy over checkpoints x steps), `reproduce.py` (the papers' claims end
to end), `likelihood.py` and `lambada.py` (the NELBO bound of a continuation, SDTT's one-pass
LAMBADA), `harness.py` (the lm-evaluation-harness), `zeroshot.py` (MDLM's zero-shot perplexity),
`continuations.py` and `self_bleu.py` (SDTT's conditional protocol: MAUVE, self-BLEU), `exact.py`
(the synthetic source's exact denoisers, the ceiling). It may import every layer below it; only
sample.py, bench.py and scripts/ stand above it."""
