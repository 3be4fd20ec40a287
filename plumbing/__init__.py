"""Plumbing: what the commands need and no method does. `cli.py` builds a command line from a
dataclass and turns a user's mistake into one error line; `prompts.py` reads a --prompt with gap
markers; `devices.py` picks the device and its precision, reads its memory and compiles a network;
`flops.py` counts a network's FLOPs and measures a device's peak. The bottom layer: it imports
nothing of the project."""
