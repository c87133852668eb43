"""rag package of ragqa."""
