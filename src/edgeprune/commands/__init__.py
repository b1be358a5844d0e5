"""One module per `edgeprune` subcommand, imported lazily by `edgeprune.cli`."""
