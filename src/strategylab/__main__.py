"""``python -m strategylab``: the same as the ``strategylab`` command."""

from strategylab.cli import main

# Guarded: the optimiser's worker processes (spawn) re-import the main module.
if __name__ == "__main__":
    main()
