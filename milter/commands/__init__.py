"""The CLI's subcommands: each module has `register(subparsers)` that adds its parser with `func` set."""
