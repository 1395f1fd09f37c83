"""Sizes and durations as people write them (``64KiB``, ``5m``) and as kvtier prints them."""

from __future__ import annotations

import re

from .errors import ConfigError

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str) -> int:
    """``4096``, ``"64KiB"``, ``"1.5GB"`` -> bytes (binary units KiB/MiB/GiB/TiB, decimal KB/MB/...)."""
    if isinstance(value, bool):
        raise ConfigError(f"expected a size in bytes, got {value!r}")
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(str(value))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise ConfigError(f"cannot parse size {value!r}: use bytes or a unit like 64KiB, 4MiB, 1GiB")
    return int(float(match.group(1)) * _UNITS[unit])


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_SECONDS = {None: 1.0, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: float | str | None) -> float | None:
    """``300``, ``"300s"``, ``"5m"``, ``"1h"``, ``"1.5d"`` -> seconds; ``"none"``/``None`` -> None."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "inf", "")):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value).lower())
        if not match:
            raise ConfigError(f"cannot parse duration {value!r}: use seconds or 500ms, 30s, 5m, 1h, 1d")
        seconds = float(match.group(1)) * _SECONDS[match.group(2)]
    if seconds <= 0:
        raise ConfigError(f"a duration must be > 0, got {value!r}")
    return seconds


def format_duration(seconds: float | None) -> str:
    """Seconds -> ``5m``, ``1h``, ``90s``; ``None`` -> ``none``."""
    if seconds is None:
        return "none"
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= scale and seconds % scale == 0:
            return f"{int(seconds // scale)}{unit}"
    return f"{seconds:g}s"


def format_size(nbytes: float) -> str:
    """Bytes -> a short binary-unit string (``1.5 GiB``)."""
    for unit, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.4g} {unit}"
    return f"{int(nbytes)} B"
