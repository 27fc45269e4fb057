"""`python -m toolchain.cli`: the `toolchain` command."""
from toolchain.cli import main

main()
