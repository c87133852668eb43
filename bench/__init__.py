"""ragqa's benchmarks: each module measures one thing and writes its section of ``BENCHMARKS.md``.

Run them as modules from the repository root, e.g. ``.venv/bin/python -m bench.qa --write``; they
import their shared helpers as ``from bench import common`` and build ragqa's components through
:class:`api.factory.RagStack`, the same assembly point as the CLI and the server.
"""
