"""Watching the denoising: `tracing.py` records the tokens after every step of any sampler,
`show.py` animates them in the terminal (sample.py --show) and `page.py` writes them as one
self-contained HTML page with a slider (sample.py --trace). It imports nothing of the project:
a trace is tensors, and the tokenizer is passed in."""
