"""pytest puts this folder (the repository root) on sys.path because this file is here."""
import torch

# Tiny models are fastest on one thread, and two OpenMP threads collapse when another
# process shares the two cores: pin one for the whole suite.
torch.set_num_threads(1)
