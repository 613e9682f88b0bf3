"""The `entropy-serve` commands: one module each, owning its flags and its run function.

Each module has HELP (one line), `add_arguments(parser)` and `run(args) -> exit code`;
cli.py is the table of them. The server's settings become flags in flags.py; flag types
are in entropy_serve/flag_types.py. A flag's own value is checked by its type (argparse's
usage error); what only the command can judge raises UsageError, which cli.py prints as
`entropy-serve COMMAND: error: ...` with exit code 2.
"""


class UsageError(ValueError):
    """Input a command cannot work from: flags that do not fit together, an unreadable file."""
