"""`python -m fastheads` is the `fastheads` command."""

from fastheads.cli import main

main()
