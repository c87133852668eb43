"""api package of ragqa."""

import ingest  # noqa: F401  # first: it sets OpenMP's passive wait before torch loads
