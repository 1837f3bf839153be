"""unitok: unified discrete-token multimodal models."""

import os as _os

# GNU OpenMP threads spin while waiting for each other; on a machine whose cores are
# shared with other processes this made a 2-thread training step ~10x slower than
# 1 thread (13.1 s vs 1.2 s per step measured on 2 busy cores). Passive waiting
# avoids it. Must be set before torch (libgomp) is first imported; a user's value wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
