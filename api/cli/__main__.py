"""``python -m api.cli`` (used by ``accelerate launch -m api.cli ...``)."""

from api.cli import main

main()
