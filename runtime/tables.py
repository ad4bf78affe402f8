"""Reads the small user-written settings files edgepack takes (packing config, energy table): JSON, or TOML when the
name ends in .toml."""
from __future__ import annotations

import json
import os


def read_table_file(path: str | os.PathLike) -> dict:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        if os.fspath(path).endswith(".toml"):
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            value = tomllib.loads(raw.decode("utf-8"))
        else:
            value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot parse ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a table (an object of names to values)")
    return value
