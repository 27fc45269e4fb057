"""`python -m toolchain`: the `toolchain` command."""
from toolchain.cli import main

main()
