"""Run-config overrides (`-c key=value ...`): a strict parser for `offsite run` and the ServerApp's check.

Flower's own parser (`flwr.common.config.parse_config_args`) silently drops tokens that are not
`key=value` (`rounds`, `rounds = 2`, a trailing `local-steps`), so a typo starts the default run.
This parser refuses them, naming the token.
"""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path
from typing import Any

# One token: key=value, the value either quoted (spaces allowed inside) or up to the next space.
_TOKEN = re.compile(r"""([A-Za-z0-9_.\-]+)=('[^']*'|"[^"]*"|\S+)(?=\s|$)""")
_SPACE = re.compile(r"\s+")


class RunConfigError(ValueError):
    """A run-config token that is not `key=value` with a TOML value; the message names it."""


def _value(key: str, raw: str, token: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        raise RunConfigError(
            f"run-config token {token!r}: {raw!r} is not a TOML value; quote strings "
            f"({key}=\"{raw}\") and write numbers and true/false bare"
        ) from None


def tokens(line: str) -> list[str]:
    """Split one `-c` argument into tokens (whitespace outside quotes separates them)."""
    out, pos = [], 0
    while pos < len(line):
        space = _SPACE.match(line, pos)
        if space:
            pos = space.end()
            continue
        match = _TOKEN.match(line, pos)
        if match:
            end = match.end()
        else:
            space = _SPACE.search(line, pos)
            end = space.start() if space else len(line)
        out.append(line[pos:end])
        pos = end
    return out


def parse_run_config(args: list[str] | None) -> dict[str, Any]:
    """Parse `-c` arguments ('rounds=5 lora-rank=4', or one .toml file) into a flat dict; strict."""
    args = [a for a in (args or []) if a.strip()]
    if len(args) == 1 and args[0].strip().endswith(".toml"):
        return _toml_file(Path(args[0].strip()).expanduser())
    overrides: dict[str, Any] = {}
    for line in args:
        for token in tokens(line):
            match = _TOKEN.fullmatch(token)
            if not match:
                raise RunConfigError(_bad_token_message(token))
            key, raw = match.groups()
            overrides[key] = _value(key, raw, token)
    return overrides


def _bad_token_message(token: str) -> str:
    if token.endswith(".toml"):
        return f"run-config file {token!r} cannot be mixed with key=value tokens; pass it alone"
    if token == "=" or token.startswith("="):
        return f"run-config token {token!r} has no key; write key=value with no spaces around '='"
    if token.endswith("="):
        return f"run-config token {token!r} has no value; write key=value with no spaces around '='"
    return f"run-config token {token!r} is not key=value (write e.g. rounds=2, no spaces around '=')"


def _toml_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RunConfigError(f"run-config file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RunConfigError(f"run-config file {path}: {exc}") from None
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: dict) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                flat[prefix + k] = v

    walk("", data)
    return flat


def check_server_run_config(run_config: dict[str, Any]):
    """The ServerApp's check of the run config it was given; logs one plain line and re-raises on error.

    Flower drops malformed `--run-config` tokens before the ServerApp runs, so what remains to check
    here are the keys and value types (unknown keys, a string where a number belongs, ranges).
    """
    from coordinator.config import ConfigError, FederationConfig

    try:
        return FederationConfig.from_run_config(dict(run_config))
    except ConfigError as exc:
        logging.getLogger("offsite.server").error("run config refused: %s", exc)
        raise
