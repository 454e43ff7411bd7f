"""Suite-wide test settings: offline, and one torch thread.

Tiny models run faster on one thread, and a 2-core machine shared by several processes (the
accelerate launch test, subprocess CLI tests) slows down badly when each asks for two.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by subprocesses
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)
