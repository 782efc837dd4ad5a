"""`python -m charrnn`: the `charrnn` command (charrnn.console)."""

from charrnn.console import main

main()
