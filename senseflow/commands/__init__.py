"""Sub-commands of the `senseflow` command line."""
