"""Griffe extension: render the Sphinx roles of maskkit's docstrings as API links.

maskkit's docstrings are Google style, but they name other objects with Sphinx roles,
e.g. ``:class:`~maskkit.MaskSplit``` or ``:meth:`MaskWeightBank.refresh```, which Markdown
would print verbatim. Each role becomes an optional autorefs link: a link to the object's
API entry where one is rendered, plain code otherwise, never a broken link. Re-exported
names are resolved to the module that defines them, where the API pages render them.
A literal block introduced by ``::`` loses its second colon.

Loaded by ``mkdocs.yml`` (mkdocstrings' python handler, ``extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

__all__ = ["SphinxRoles", "convert_roles"]

ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|obj|exc):`(?P<tilde>~?)(?P<target>[^`]+)`")
LITERAL_INTRO = re.compile(r"(?<=\S)::$", flags=re.MULTILINE)


def convert_roles(text: str, resolve: Any = lambda name: name) -> str:
    """Replace Sphinx roles in ``text`` by ``<autoref>`` tags; ``resolve`` maps a target name
    to the identifier of its API entry."""

    def replace(match: re.Match[str]) -> str:
        target = match["target"].strip()
        title = target.rsplit(".", 1)[-1] if match["tilde"] else target
        identifier = resolve(target)
        return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'

    return LITERAL_INTRO.sub(":", ROLE.sub(replace, text))


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        objects = list(_walk(pkg))
        by_name: dict[str, list[str]] = {}
        for obj in objects:
            by_name.setdefault(obj.name, []).append(obj.path)
        for obj in objects:
            if obj.docstring is not None:
                scopes = [scope.path for scope in _scopes(obj)]
                obj.docstring.value = convert_roles(
                    obj.docstring.value,
                    lambda name, scopes=scopes: _resolve(pkg, scopes, by_name, name),
                )


def _walk(obj: griffe.Object) -> Any:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _scopes(obj: griffe.Object) -> Any:
    """The object itself, then each enclosing class or module, innermost first."""
    scope: Any = obj
    while scope is not None:
        yield scope
        scope = scope.parent


def _resolve(
    pkg: griffe.Module, scopes: list[str], by_name: dict[str, list[str]], name: str
) -> str:
    """Canonical path of ``name``: absolute, or relative to an enclosing scope (``refresh``
    in a class, ``MaskSplit`` in the package), or else the one object of that name."""
    for candidate in [name, *(f"{scope}.{name}" for scope in scopes)]:
        parts = candidate.split(".")
        if parts[0] != pkg.name:
            continue
        obj: Any = pkg
        try:
            for part in parts[1:]:
                obj = obj.members[part]
                if obj.is_alias:
                    obj = obj.final_target
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        return obj.path
    matches = by_name.get(name.rsplit(".", 1)[-1], [])
    return matches[0] if len(matches) == 1 else name
