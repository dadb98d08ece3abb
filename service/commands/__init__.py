"""The implementations of the `herald` subcommands; `service.cli` parses the arguments."""
