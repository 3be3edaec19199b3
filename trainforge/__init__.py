"""The `trainforge` command: the embedded stack (`up`) and one subcommand per part."""
