"""api package of ragqa."""
