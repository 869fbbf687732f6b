"""`python -m decaylab` (and `torchrun -m decaylab train …`): the `decaylab` command."""

from decaylab.cli import main

main()
