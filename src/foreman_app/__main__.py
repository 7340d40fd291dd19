"""`python -m foreman_app`: the `foreman` command."""

from foreman_app.cli import main

main()
