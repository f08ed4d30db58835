import os

import pytest
import torch

# Two shared cores: more than one intra-op thread makes small convolutions spin-wait
# under contention (see docs/architecture.md, "Devices, precision and threads"). Tests pin one
# thread, and subprocesses inherit it through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
