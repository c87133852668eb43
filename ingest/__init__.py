"""Ingestion: documents in, chunks and embeddings out, stored in crash-safe FAISS collections.

Lowest layer of ragqa: it imports nothing from ``rag``, ``finetune`` or ``api``.
"""

import os

# OpenMP threads (torch's CPU kernels) sleep when they run out of work instead of spinning. With spinning (the
# default), a process whose threads share the cores with another busy process (an upload being embedded, a
# second worker, a training job) waits at every parallel region for a thread that is not running: one answer on
# a 2-core CPU beside one busy process took 68 s spinning, 12 s sleeping (8 s alone either way; BENCHMARKS.md
# "CPU threads under contention"). Set before torch loads: every ragqa package imports this one first.
# OMP_WAIT_POLICY=ACTIVE in the environment keeps the spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
