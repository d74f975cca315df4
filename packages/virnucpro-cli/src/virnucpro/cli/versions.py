"""``virnucpro --version``: every installed virnucpro package and plugin with its version."""

from __future__ import annotations

from importlib import metadata

from virnucpro.cli.hookspecs import ENTRY_POINT_GROUP
from virnucpro.infer.plugins import normalize


def installed_packages() -> list[tuple[str, str]]:
    """(distribution, version) of the virnucpro-* packages and of every plugin."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = normalize(dist.metadata["Name"] or "")
        is_plugin = any(ep.group == ENTRY_POINT_GROUP for ep in dist.entry_points)
        if name.startswith("virnucpro") or is_plugin:
            found.setdefault(name, dist.version)
    return sorted(found.items())


def version_lines() -> list[str]:
    packages = installed_packages()
    if not packages:
        return ["virnucpro: no installed virnucpro package found (running from a source tree?)"]
    return [f"{name} {version}" for name, version in packages]
