"""How a ServerConfig field (config.py) declares itself: its default and, where commands
take it as a flag, its `Flag`: the group that says which commands take it, its help,
type and choices. commands/flags.py generates the commands' flags from these."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Flag groups: which commands take a field as a flag (commands/flags.py).
ENGINE = "engine"  # every command that starts an engine
PARALLEL = "parallelism (vLLM's)"  # with the engine's flags
ANSWERING = "answering"  # commands that answer requests: serve, batch
SERVING = "serving"  # serve only: where to listen, keys, limits of HTTP
STATE = "files, batches and stored responses"  # serve only


@dataclass(frozen=True)
class Flag:
    group: str
    help: str
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    name: str | None = None  # the flag, when not the field's name (--api-key for api_keys)
    short: str | None = None  # e.g. -tp
    repeated: bool = False  # given once per value (flag_types.Repeated)


def setting(default: Any, flag: Flag | None = None) -> Any:
    """A ServerConfig field: its default, and its flag where commands take it as one."""
    if isinstance(default, list | dict):
        raise TypeError("a setting's default must be immutable")
    return dataclasses.field(default=default, metadata={"flag": flag})


def flag_of(field: dataclasses.Field) -> Flag | None:
    return field.metadata.get("flag")
