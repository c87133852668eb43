"""Ingestion: documents in, chunks and embeddings out, stored in crash-safe FAISS collections.

Lowest layer of ragqa: it imports nothing from ``rag``, ``finetune`` or ``api``.
"""

import os

# OpenMP threads (torch's CPU kernels) sleep when they run out of work instead of spinning. With spinning (the
# default), a process whose threads share the cores with another busy process (an upload being embedded, a
# second worker, a training job) waits at every parallel region for a thread that is not running: generation on
# a 2-core CPU with one other busy process took 365 s instead of 35 s (BENCHMARKS.md "CPU threads under
# contention"). Set before torch loads: every ragqa package imports this one first. OMP_WAIT_POLICY=ACTIVE in
# the environment keeps the spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
