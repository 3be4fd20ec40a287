"""Loading: checkpoints in and out. `checkpoint.py` writes ours atomically and reads any model
back without running pickled code; `hub.py` turns MDLM's, Duo's and SEDD's published weights (a
Hugging Face folder or hub name, a Lightning .ckpt, a bare state dict) into one of ours;
`lightning.py` reads what a Lightning checkpoint's training config says. It imports the maths,
the networks, data.py and processes/; nothing above them."""
