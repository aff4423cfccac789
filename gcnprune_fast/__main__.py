"""``python -m gcnprune_fast ...`` runs the ``gcnprune`` command line."""
import sys

from gcnprune_fast.cli import main

if __name__ == "__main__":
    sys.exit(main())
