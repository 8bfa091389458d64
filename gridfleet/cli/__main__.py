"""``python -m gridfleet.cli``: the same as the ``gridfleet`` command."""

from gridfleet.cli import main

main()
