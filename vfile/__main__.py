"""`python -m vfile` is the same as the `vfile` console script."""

from vfile.cli import main

main()
