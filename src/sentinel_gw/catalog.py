"""The aggregated view of every backend's tools, prompts, resources and templates. Sans-I/O.

Each backend's lists are stored as the backend sent them; `Catalog.build` merges them into an
immutable `CatalogView` in a deterministic order (config order of backends, then each backend's
own order), assigns exposed names, and keeps the reverse maps the router needs. Definitions are
copied with only the name changed, so fields the gateway does not know survive.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sentinel_gw.protocol.mcp import exposed_name, short_hash

log = logging.getLogger("sentinel_gw.catalog")

KINDS = ("tools", "prompts", "resources", "resourceTemplates")


@dataclass(frozen=True, slots=True)
class Entry:
    """A tool or prompt as exposed: name the client sees, where it lives, its definition."""

    exposed: str
    backend: str
    original: str
    definition: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ResourceEntry:
    uri: str
    backend: str
    definition: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class TemplateEntry:
    template: str
    backend: str
    definition: Mapping[str, Any]
    pattern: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class CatalogView:
    version: int = 0
    tools: tuple[Entry, ...] = ()
    prompts: tuple[Entry, ...] = ()
    resources: tuple[ResourceEntry, ...] = ()
    templates: tuple[TemplateEntry, ...] = ()
    tool_by_name: Mapping[str, Entry] = field(default_factory=dict)
    prompt_by_name: Mapping[str, Entry] = field(default_factory=dict)
    # Every named entry, including those of backends that are down (restarting, circuit open):
    # calls resolve through these so they can wait for a restart or fail fast with the reason.
    known_tools: Mapping[str, Entry] = field(default_factory=dict)
    known_prompts: Mapping[str, Entry] = field(default_factory=dict)
    resource_by_uri: Mapping[str, ResourceEntry] = field(default_factory=dict)

    def route_resource(self, uri: str) -> str | None:
        """The backend that owns a URI: a listed resource first, else the first matching template."""
        entry = self.resource_by_uri.get(uri)
        if entry is not None:
            return entry.backend
        for tmpl in self.templates:
            if tmpl.pattern.fullmatch(uri):
                return tmpl.backend
        return None

    def template_owner(self, uri_template: str) -> str | None:
        for tmpl in self.templates:
            if tmpl.template == uri_template:
                return tmpl.backend
        return None


_EXPR = re.compile(r"\{([+#./;?&]?)([^}]*)\}")


def template_regex(template: str) -> re.Pattern[str]:
    """A matcher for an RFC 6570 template: simple expressions match one path segment, `{+x}`
    and `{#x}` match anything, query/fragment forms match the rest of the URI."""
    out: list[str] = []
    pos = 0
    for m in _EXPR.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        op = m.group(1)
        if op in ("+", "#"):
            out.append(".*")
        elif op in ("?", "&"):
            out.append(r"(?:[?&].*)?")
        elif op in ("/", ".", ";"):
            out.append(r"(?:" + re.escape(op) + r"[^/?#]*)*")
        else:
            out.append(r"[^/?#]+")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out), re.DOTALL)


@dataclass(slots=True)
class BackendLists:
    tools: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    resourceTemplates: list[dict[str, Any]] = field(default_factory=list)


def _valid_items(backend: str, kind: str, items: Iterable[Any], key: str) -> list[dict[str, Any]]:
    """Drop malformed items one by one (the original dropped the whole backend for one)."""
    good: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get(key), str) and item[key]:
            good.append(item)
        else:
            log.warning("backend %s: malformed %s entry skipped (no string %r)", backend, kind, key)
    return good


class Catalog:
    """Mutable per-backend lists plus the current immutable merged view."""

    def __init__(self, order: Sequence[str], prefixes: Mapping[str, str], name_budget: int) -> None:
        self.order = list(order)
        self.prefixes = dict(prefixes)
        self.name_budget = name_budget
        self.lists: dict[str, BackendLists] = {}
        self.view = CatalogView()

    def set_lists(self, backend: str, kind: str, items: Iterable[Any]) -> None:
        key = {"resources": "uri", "resourceTemplates": "uriTemplate"}.get(kind, "name")
        setattr(self.lists.setdefault(backend, BackendLists()), kind, _valid_items(backend, kind, items, key))

    def drop_backend(self, backend: str) -> None:
        self.lists.pop(backend, None)

    def rebuild(self, visible_backends: Iterable[str]) -> tuple[CatalogView, set[str]]:
        """Merge the lists of `visible_backends`; returns the new view and the kinds that changed."""
        present = set(visible_backends)
        # Names come from every backend whose lists we know, up or not, so a backend that is
        # restarting keeps its names: a colliding name never moves to another backend meanwhile.
        known = [b for b in self.order if b in self.lists]
        backends = [b for b in known if b in present]
        all_tools = self._name_entries(known, "tools")
        all_prompts = self._name_entries(known, "prompts")
        tools = [e for e in all_tools if e.backend in present]
        prompts = [e for e in all_prompts if e.backend in present]
        resources: list[ResourceEntry] = []
        by_uri: dict[str, ResourceEntry] = {}
        templates: list[TemplateEntry] = []
        for b in backends:
            for res in self.lists[b].resources:
                uri = res["uri"]
                if uri in by_uri:
                    log.warning(
                        "resource %s offered by %s and %s; %s serves it",
                        uri,
                        by_uri[uri].backend,
                        b,
                        by_uri[uri].backend,
                    )
                    continue
                entry = ResourceEntry(uri, b, res)
                by_uri[uri] = entry
                resources.append(entry)
            for tmpl in self.lists[b].resourceTemplates:
                try:
                    pattern = template_regex(tmpl["uriTemplate"])
                except re.error:
                    log.warning("backend %s: unusable resource template %r skipped", b, tmpl["uriTemplate"])
                    continue
                templates.append(TemplateEntry(tmpl["uriTemplate"], b, tmpl, pattern))
        old = self.view
        view = CatalogView(
            version=old.version + 1,
            tools=tuple(tools),
            prompts=tuple(prompts),
            resources=tuple(resources),
            templates=tuple(templates),
            tool_by_name={e.exposed: e for e in tools},
            prompt_by_name={e.exposed: e for e in prompts},
            known_tools={e.exposed: e for e in all_tools},
            known_prompts={e.exposed: e for e in all_prompts},
            resource_by_uri=by_uri,
        )
        changed = set()
        if old.tools != view.tools:
            changed.add("tools")
        if old.prompts != view.prompts:
            changed.add("prompts")
        if old.resources != view.resources or old.templates != view.templates:
            changed.add("resources")
        self.view = view
        return view, changed

    def _name_entries(self, backends: list[str], kind: str) -> list[Entry]:
        entries: list[Entry] = []
        taken: dict[str, str] = {}
        for b in backends:
            prefix = self.prefixes.get(b, "")
            for item in getattr(self.lists[b], kind):
                original = item["name"]
                name = exposed_name(original, prefix, self.name_budget)
                if name in taken:
                    # Deterministic by config order: the earlier backend keeps the plain name.
                    alt = exposed_name(original, f"{prefix}_{b}" if prefix else b, self.name_budget)
                    if alt in taken:
                        alt = exposed_name(
                            f"{original}_{short_hash(b + ':' + original)}", prefix, self.name_budget
                        )
                    log.warning(
                        "%s name %r of backend %s collides with backend %s; exposed as %r",
                        kind[:-1],
                        original,
                        b,
                        taken[name],
                        alt,
                    )
                    name = alt
                if name in taken:
                    log.error(
                        "%s %r of backend %s cannot be given a unique name; skipped", kind[:-1], original, b
                    )
                    continue
                taken[name] = b
                definition = item if name == original else {**item, "name": name}
                entries.append(Entry(name, b, original, definition))
        return entries
