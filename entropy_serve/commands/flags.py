"""The server's settings as flags: generated from ServerConfig's fields (server/config.py),
so a name, its default, type and help are written once.

A command takes the groups it needs (`add_server_flags(parser, ENGINE, ...)`); settings
resolve once, in this order: defaults, then environment (e.g. ENTROPY_SERVE_API_KEY,
cli.py), then flags; `server_config` turns them into the frozen ServerConfig that
everything after reads, resolving the defaults that depend on other settings (the
embedded model, its name, its entropy profile, the learned strategy settings).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from entropy_serve import calibration, flag_types, model_store
from entropy_serve.commands import UsageError
from entropy_serve.server.config import ServerConfig
from entropy_serve.server.settings import ENGINE, PARALLEL, flag_of

ENGINE_GROUPS = (ENGINE, PARALLEL)


def add_server_flags(parser: argparse.ArgumentParser, *groups: str) -> None:
    """One flag per ServerConfig field of `groups` (the engine's groups always included)."""
    wanted = {*ENGINE_GROUPS, *groups}
    sections = {}
    for field in dataclasses.fields(ServerConfig):
        flag = flag_of(field)
        if flag is None or flag.group not in wanted:
            continue
        if flag.group not in sections:
            sections[flag.group] = parser if flag.group == ENGINE else parser.add_argument_group(flag.group)
        names = [flag.name or "--" + field.name.replace("_", "-"), *([flag.short] if flag.short else [])]
        options = dict(dest=field.name, help=flag.help)
        if flag.repeated:
            options.update(action=flag_types.Repeated, default=list(field.default), type=flag.type)
        elif field.type in ("bool", "bool | None"):
            boolean = argparse.BooleanOptionalAction if field.default is None else "store_true"
            options.update(action=boolean, default=field.default)
        else:
            options.update(type=flag.type, default=field.default, choices=flag.choices)
        sections[flag.group].add_argument(*names, **options)


def server_config(args: argparse.Namespace, **overrides) -> ServerConfig:
    """The frozen ServerConfig of these flags (the embedded model prepared if needed);
    `overrides`: settings the command fixes itself (e.g. calibrate's max_n)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerConfig) if hasattr(args, f.name)}
    model = given.get("model") or str(model_store.prepare_default_model())
    if given.get("model") is None:
        default_name = model_store.DEFAULT_MODEL_NAME
    else:
        default_name = Path(model).name if Path(model).exists() else model
    given.update(model=model, served_model_name=given.get("served_model_name") or default_name)
    if "entropy_profile" in given:  # the answering flags
        if given["enable_auto_tool_choice"] and not given["tool_call_parser"]:
            raise UsageError("--enable-auto-tool-choice needs --tool-call-parser (the model's tool-call format)")
        profile = given["entropy_profile"] or calibration.profile_for(args.model)
        given.update(entropy_profile=profile, strategy_defaults=strategy_defaults_path(given, profile))
    if "api_keys" in given:
        given["api_keys"] = tuple(key.strip() for key in given["api_keys"] if key.strip())
    given = {name: str(value) if isinstance(value, Path) else value for name, value in given.items()}
    return ServerConfig(**{**given, **overrides})


def strategy_defaults_path(given: dict, profile: Path | str | None) -> Path | str | None:
    """--strategy-defaults, else the probe folder's learned ones, else the profile's."""
    from entropy_serve.server.strategies import defaults

    if given["strategy_defaults"]:
        return given["strategy_defaults"]
    if given["probe"] and (Path(given["probe"]) / defaults.DEFAULTS_FILE).is_file():
        return Path(given["probe"]) / defaults.DEFAULTS_FILE
    return profile if profile and defaults.has_defaults(profile) else None
