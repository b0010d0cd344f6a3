"""Test-wide settings."""
import torch

# The suite's networks are tiny: one intra-op thread is faster than two on a small machine, and it
# leaves the second core to the subprocess runs (torchrun, pipeline) that some tests start.
torch.set_num_threads(1)
