"""Processes: the diffusion processes beyond the absorbing one of diffusion.py, each a value with
the `diffusion.Process` interface. `uniform.py` is the uniform-state process (UDLM, Duo's teacher);
`duo.py` is Duo's Gaussian view of it, its curriculum loss and its distillation (DCD); `sedd.py`
is SEDD's concrete scores on the absorbing graph, with its samplers; `registry.py` names every
process, the one place a new one is registered. It imports diffusion.py and model.py only."""
