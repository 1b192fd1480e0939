"""One module per `mrlfads` subcommand; see training/cli.py."""
