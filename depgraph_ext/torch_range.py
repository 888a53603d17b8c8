"""The torch releases depgraph_ext supports, in one place: setup.py reads this file (without
importing the package) to refuse a build against any other torch, depgraph_ext.ops refuses to
load its op library under one, and a test keeps pyproject.toml's requirement the same.

Plain Python with no imports beyond the standard library, so that it runs anywhere.
"""

from __future__ import annotations

import re

OLDEST = (2, 11)  # the oldest supported release
NEWEST = (2, 15)  # the newest supported release
REQUIREMENT = f"torch>={OLDEST[0]}.{OLDEST[1]},<{NEWEST[0]}.{NEWEST[1] + 1}"


def release(version: str) -> tuple[int, int] | None:
    """(major, minor) of a torch version string ('2.11.0+cu130', '2.16.0.dev20260101'), or
    None when it does not start with one."""
    match = re.match(r"(\d+)\.(\d+)", str(version))
    return (int(match.group(1)), int(match.group(2))) if match else None


def unsupported(version: str) -> str | None:
    """None for a supported torch version, else a sentence naming it and the supported range."""
    found = release(version)
    if found is not None and OLDEST <= found <= NEWEST:
        return None
    return (
        f"torch {version} is not supported: depgraph_ext supports torch "
        f"{OLDEST[0]}.{OLDEST[1]} to {NEWEST[0]}.{NEWEST[1]} (pip install '{REQUIREMENT}')"
    )
