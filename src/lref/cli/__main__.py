"""`python -m lref.cli ...`, the same as the `lref` console script."""

from lref.cli import main

main()
