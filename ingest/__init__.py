"""Ingestion: documents in, chunks and embeddings out, stored in crash-safe FAISS collections.

Lowest layer of ragqa: it imports nothing from ``rag``, ``finetune`` or ``api``.
"""
