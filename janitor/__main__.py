"""`python -m janitor`: the same as the `janitor` command."""

from janitor.cli import main

main()
