"""The `entropy-serve` commands: one module each, owning its flags and its run function.

Each module has HELP (one line), `add_arguments(parser)` and `run(args) -> exit code`;
cli.py is the table of them. Flag types shared by several commands are in flags.py.
"""
