"""Training: what every loop calls and no method owns. `step.py` takes one optimizer step of a
network (micro-batches, DDP's gradient sync, clipping, the warm-up schedule), draws a step's batch
and noise from (seed, step), and keeps the EMA; `run.py` writes a run's checkpoints, resumes a
killed run, validates, and keeps the progress bar and log.jsonl. The loops themselves live with
their algorithms: pretraining in train.py, SDTT in sdtt.py, IDLM in idlm.py, DCD in dcd.py. It
imports the maths, the networks, plumbing/ and loading/; nothing above them."""
