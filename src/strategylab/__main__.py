"""``python -m strategylab``: the same as the ``strategylab`` command."""

from strategylab.cli import main

main()
