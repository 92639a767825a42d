"""Role-based access control: roles -> permissions and allow/deny globs. Pure, no I/O.

Model
-----
* A role *grants* a set of permissions on the items its ``allow_*`` globs match. Grants are
  evaluated **per role**: a tool is callable when one single role (held directly or through
  ``inherits``) grants ``tools.call`` *and* allows the backend *and* allows the tool. Unioning
  permissions and allow lists separately would let role A's permission combine with role B's
  allow list (``reader`` with ``tools.list`` on ``*`` plus ``fs-runner`` with ``tools.call`` on
  ``fs_*`` would yield ``tools.call`` on ``*``), which is a privilege escalation.
* ``inherits`` means "also holds that role": a role adds its ancestors' grants and denials.
* Denials (``deny_*``) of every role in effect are pooled and always win.
* Unknown roles grant nothing. No roles: nothing is allowed.

Matching
--------
Globs have :func:`fnmatch.fnmatchcase` semantics (case-sensitive, ``*``, ``?``, ``[...]``), and a
pattern also matches a name equal to it literally, so ``deny_tools = ["a[1]"]`` denies a tool
really named ``a[1]`` (a glob alone would only match ``a1``). Tool and prompt patterns containing
``:`` are matched against ``backend:original``; the others against the exposed name. There is no
case folding or Unicode normalisation: names are compared exactly, so allow lists never widen
(``read_*`` does not allow ``read_x`` spelt with a Cyrillic ``e``); deny lists are exact too, which is why an
allow list is the robust way to restrict.

Resource URIs are checked in several forms (see :func:`uri_forms`): the URI as given, its
RFC 3986 normal form (lowercase scheme and host, percent-encoded unreserved characters decoded,
dot-segments removed), and an aggressive form (all percent-escapes decoded repeatedly,
backslashes and repeated slashes folded) that models what a lenient server might do. A deny in
*any* form denies; an allow must match both the given and the normal form, so
``file:///pub/../secret`` neither dodges ``deny_resources = ["file:///secret/*"]`` nor slips
through ``allow_resources = ["file:///pub/*"]``. Write resource patterns in normal form.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from sentinel_gw.config_schema import RbacConfig, RoleConfig

__all__ = [
    "PERMISSIONS",
    "Decision",
    "GlobSet",
    "Rbac",
    "RoleView",
    "normalize_uri",
    "uri_forms",
]

TOOLS_LIST: Final = "tools.list"
TOOLS_CALL: Final = "tools.call"
RESOURCES_LIST: Final = "resources.list"
RESOURCES_READ: Final = "resources.read"
PROMPTS_LIST: Final = "prompts.list"
PROMPTS_GET: Final = "prompts.get"
COMPLETION: Final = "completion"

PERMISSIONS: Final[frozenset[str]] = frozenset(
    {TOOLS_LIST, TOOLS_CALL, RESOURCES_LIST, RESOURCES_READ, PROMPTS_LIST, PROMPTS_GET, COMPLETION}
)

# What each configurable permission string grants (aliases from the original included).
_EXPANSION: Final[Mapping[str, frozenset[str]]] = {
    "*": PERMISSIONS,
    TOOLS_LIST: frozenset({TOOLS_LIST}),
    "tools.read": frozenset({TOOLS_LIST}),
    # Being able to call a tool implies being able to see it in the list.
    TOOLS_CALL: frozenset({TOOLS_CALL, TOOLS_LIST}),
    "tools.execute": frozenset({TOOLS_CALL, TOOLS_LIST}),
    RESOURCES_LIST: frozenset({RESOURCES_LIST}),
    RESOURCES_READ: frozenset({RESOURCES_READ, RESOURCES_LIST}),
    PROMPTS_LIST: frozenset({PROMPTS_LIST}),
    PROMPTS_GET: frozenset({PROMPTS_GET, PROMPTS_LIST}),
    COMPLETION: frozenset({COMPLETION}),
}

_MEMO_LIMIT: Final = 4096
_VIEW_LIMIT: Final = 1024


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str


# ---------------------------------------------------------------------------------------------
# Globs


_glob_cache: dict[str, re.Pattern[str]] = {}


def _glob_regex(patterns: Iterable[str]) -> re.Pattern[str] | None:
    parts = [f"(?:{fnmatch.translate(p)})" for p in patterns]
    if not parts:
        return None
    key = "|".join(parts)
    rx = _glob_cache.get(key)
    if rx is None:
        rx = re.compile(key)
        if len(_glob_cache) < _MEMO_LIMIT:
            _glob_cache[key] = rx
    return rx


class GlobSet:
    """A compiled set of glob patterns with provenance (for explanations).

    ``qualified_split=True`` routes patterns containing ``:`` to the ``backend:original`` form
    and the others to the plain (exposed) name.
    """

    __slots__ = ("_plain", "_plain_literals", "_qual", "_qual_literals", "_split", "entries")

    def __init__(self, entries: Iterable[tuple[str, str]], *, qualified_split: bool = False) -> None:
        # entries: (pattern, origin) where origin is e.g. "rbac.roles.dev.deny_tools"
        self.entries: tuple[tuple[str, str], ...] = tuple(dict.fromkeys(entries))
        self._split = qualified_split
        plain = [p for p, _ in self.entries if not (qualified_split and ":" in p)]
        qual = [p for p, _ in self.entries if qualified_split and ":" in p]
        self._plain = _glob_regex(plain)
        self._qual = _glob_regex(qual)
        self._plain_literals = frozenset(plain)
        self._qual_literals = frozenset(qual)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def match(self, name: str, qualified: str | None = None) -> bool:
        if self._plain is not None and (name in self._plain_literals or self._plain.match(name)):
            return True
        return (
            qualified is not None
            and self._qual is not None
            and (qualified in self._qual_literals or self._qual.match(qualified) is not None)
        )

    def first_match(self, name: str, qualified: str | None = None) -> tuple[str, str] | None:
        """The (pattern, origin) that matches, for explanations; slow path."""
        for pattern, origin in self.entries:
            target = qualified if (self._split and ":" in pattern) else name
            if target is None:
                continue
            if target == pattern or fnmatch.fnmatchcase(target, pattern):
                return pattern, origin
        return None


# ---------------------------------------------------------------------------------------------
# URIs

_SCHEME_RE: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):(.*)$", re.DOTALL)
_PCT_RE: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _decode_unreserved(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in _UNRESERVED else "%" + m.group(1).upper()

    return _PCT_RE.sub(repl, text)


def _decode_all(text: str) -> str:
    # Repeated so double encoding (%252e) is also seen through; bounded to stay cheap.
    for _ in range(4):
        decoded = _PCT_RE.sub(lambda m: chr(int(m.group(1), 16)), text)
        if decoded == text:
            break
        text = decoded
    return text


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4."""
    out: list[str] = []
    i = path
    while i:
        if i.startswith("../"):
            i = i[3:]
        elif i.startswith("./"):
            i = i[2:]
        elif i.startswith("/./"):
            i = "/" + i[3:]
        elif i == "/.":
            i = "/"
        elif i.startswith("/../"):
            i = "/" + i[4:]
            if out:
                out.pop()
        elif i == "/..":
            i = "/"
            if out:
                out.pop()
        elif i in (".", ".."):
            i = ""
        else:
            start = 1 if i.startswith("/") else 0
            nxt = i.find("/", start)
            if nxt == -1:
                nxt = len(i)
            out.append(i[:nxt])
            i = i[nxt:]
    return "".join(out)


def _split_uri(uri: str) -> tuple[str | None, str | None, str, str]:
    """(scheme, authority, path, rest) where rest is ``?query#fragment`` (kept as is)."""
    m = _SCHEME_RE.match(uri)
    if m is None:
        scheme, hier = None, uri
    else:
        scheme, hier = m.group(1), m.group(2)
    cut = len(hier)
    for ch in "?#":
        pos = hier.find(ch)
        if pos != -1:
            cut = min(cut, pos)
    hier, rest = hier[:cut], hier[cut:]
    authority: str | None = None
    if hier.startswith("//"):
        end = hier.find("/", 2)
        if end == -1:
            end = len(hier)
        authority, hier = hier[2:end], hier[end:]
    return scheme, authority, hier, rest


def _lower_host(authority: str) -> str:
    userinfo, at, hostport = authority.rpartition("@")
    return f"{userinfo}{at}{hostport.lower()}"


def _join(scheme: str | None, authority: str | None, path: str, rest: str) -> str:
    out = f"{scheme}:" if scheme is not None else ""
    if authority is not None:
        out += "//" + authority
    return out + path + rest


def normalize_uri(uri: str) -> str:
    """RFC 3986 syntax-based normalisation (section 6.2.2)."""
    scheme, authority, path, rest = _split_uri(uri)
    if scheme is not None:
        scheme = scheme.lower()
    if authority is not None:
        authority = _lower_host(_decode_unreserved(authority))
    path = _remove_dot_segments(_decode_unreserved(path))
    return _join(scheme, authority, path, _decode_unreserved(rest))


def _aggressive_uri(uri: str) -> str:
    scheme, authority, path, rest = _split_uri(uri)
    if scheme is not None:
        scheme = scheme.lower()
    if authority is not None:
        authority = _lower_host(_decode_all(authority))
    path = _decode_all(path).replace("\\", "/")
    path = re.sub(r"/{2,}", "/", path)
    path = _remove_dot_segments(path)
    return _join(scheme, authority, path, rest)


def uri_forms(uri: str) -> tuple[str, str, str]:
    """(given, normal form, aggressive form) of a resource URI."""
    return uri, normalize_uri(uri), _aggressive_uri(uri)


# ---------------------------------------------------------------------------------------------
# Compilation

_PATTERN_KEYS: Final = (
    "allow_tools",
    "deny_tools",
    "allow_backends",
    "deny_backends",
    "allow_resources",
    "deny_resources",
    "allow_prompts",
    "deny_prompts",
)


@dataclass(frozen=True, slots=True)
class _Role:
    """One role's own grants and denials (grants are never merged across roles)."""

    name: str
    permissions: frozenset[str]
    allow_tools: GlobSet
    allow_backends: GlobSet
    allow_resources: GlobSet
    allow_prompts: GlobSet
    deny: Mapping[str, tuple[tuple[str, str], ...]]  # "tools" -> ((pattern, origin), ...)


def _expand_permissions(role: str, perms: object) -> frozenset[str]:
    if not isinstance(perms, tuple):
        raise ValueError(f"rbac.roles.{role}.permissions: must be a list of strings")
    out: set[str] = set()
    for p in perms:
        expansion = _EXPANSION.get(p) if isinstance(p, str) else None
        if expansion is None:
            known = ", ".join(sorted(_EXPANSION))
            raise ValueError(f"rbac.roles.{role}.permissions: unknown permission {p!r} (known: {known})")
        out |= expansion
    return frozenset(out)


def _patterns(role: str, key: str, value: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, tuple) or not all(isinstance(p, str) and p for p in value):
        raise ValueError(f"rbac.roles.{role}.{key}: must be a list of non-empty strings")
    origin = f"rbac.roles.{role}.{key}"
    return tuple((p, origin) for p in value)


def _compile_role(name: str, role: RoleConfig) -> _Role:
    pats = {key: _patterns(name, key, getattr(role, key)) for key in _PATTERN_KEYS}
    return _Role(
        name=name,
        permissions=_expand_permissions(name, role.permissions),
        allow_tools=GlobSet(pats["allow_tools"], qualified_split=True),
        allow_backends=GlobSet(pats["allow_backends"]),
        allow_resources=GlobSet(pats["allow_resources"]),
        allow_prompts=GlobSet(pats["allow_prompts"], qualified_split=True),
        deny={
            "tools": pats["deny_tools"],
            "backends": pats["deny_backends"],
            "resources": pats["deny_resources"],
            "prompts": pats["deny_prompts"],
        },
    )


class Rbac:
    """RBAC compiled once per config snapshot; :meth:`view` gives the per-identity evaluator."""

    __slots__ = ("_closures", "_roles", "_views")

    def __init__(self, roles: Mapping[str, _Role], closures: Mapping[str, tuple[str, ...]]) -> None:
        self._roles = dict(roles)
        self._closures = dict(closures)
        self._views: dict[tuple[str, ...], RoleView] = {}

    @classmethod
    def compile(cls, cfg: RbacConfig) -> Rbac:
        """Compile and validate; raises ValueError naming ``rbac.roles.<name>.<key>``."""
        configs: Mapping[str, RoleConfig] = cfg.roles
        roles: dict[str, _Role] = {}
        for name, role in configs.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"rbac.roles.{name!r}: role names must be non-empty strings")
            if not isinstance(role, RoleConfig):
                raise ValueError(f"rbac.roles.{name}: expected a role table")
            inherits = role.inherits
            if not isinstance(inherits, tuple) or not all(isinstance(p, str) for p in inherits):
                raise ValueError(f"rbac.roles.{name}.inherits: must be a list of role names")
            for parent in inherits:
                if parent not in configs:
                    raise ValueError(f"rbac.roles.{name}.inherits: unknown role {parent!r}")
            roles[name] = _compile_role(name, role)

        closures: dict[str, tuple[str, ...]] = {}

        def visit(name: str, path: tuple[str, ...]) -> tuple[str, ...]:
            done = closures.get(name)
            if done is not None:
                return done
            if name in path:
                cycle = " -> ".join((*path[path.index(name) :], name))
                raise ValueError(f"rbac.roles.{path[-1]}.inherits: inheritance cycle {cycle}")
            seen: dict[str, None] = {name: None}
            for parent in configs[name].inherits:
                for r in visit(parent, (*path, name)):
                    seen.setdefault(r, None)
            closures[name] = tuple(seen)
            return closures[name]

        for name in configs:
            visit(name, ())
        return cls(roles, closures)

    @property
    def role_names(self) -> tuple[str, ...]:
        return tuple(self._roles)

    def effective_roles(self, role: str) -> tuple[str, ...]:
        """The role itself and everything it inherits, transitively (empty if unknown)."""
        return self._closures.get(role, ())

    def view(self, roles: tuple[str, ...]) -> RoleView:
        v = self._views.get(roles)
        if v is None:
            v = self._build_view(roles)
            if len(self._views) >= _VIEW_LIMIT:
                self._views.clear()
            self._views[roles] = v
        return v

    def _build_view(self, roles: tuple[str, ...]) -> RoleView:
        effective: dict[str, None] = {}
        unknown: dict[str, None] = {}
        for r in roles:
            closure = self._closures.get(r)
            if closure is None:
                unknown[r] = None
                continue
            for name in closure:
                effective.setdefault(name, None)
        return RoleView(tuple(roles), tuple(unknown), tuple(self._roles[n] for n in effective))


# ---------------------------------------------------------------------------------------------
# Evaluation


class RoleView:
    """What one set of roles may do. Cheap boolean checks for the hot path (memoised per name)
    and Decision/explain variants saying which rule decided."""

    __slots__ = (
        "_by_perm",
        "_deny_backends",
        "_deny_prompts",
        "_deny_resources",
        "_deny_tools",
        "_memo",
        "effective_roles",
        "roles",
        "unknown_roles",
    )

    def __init__(
        self, roles: tuple[str, ...], unknown_roles: tuple[str, ...], grants: tuple[_Role, ...]
    ) -> None:
        self.roles = roles
        self.unknown_roles = unknown_roles
        self.effective_roles: tuple[str, ...] = tuple(g.name for g in grants)
        self._by_perm: dict[str, tuple[_Role, ...]] = {
            p: tuple(g for g in grants if p in g.permissions) for p in PERMISSIONS
        }

        def pool(kind: str, split: bool) -> GlobSet:
            return GlobSet((e for g in grants for e in g.deny[kind]), qualified_split=split)

        self._deny_tools = pool("tools", True)
        self._deny_backends = pool("backends", False)
        self._deny_resources = pool("resources", False)
        self._deny_prompts = pool("prompts", True)
        self._memo: dict[tuple[str, ...], bool] = {}

    # -- permissions -----------------------------------------------------------------------

    def can(self, permission: str) -> bool:
        return bool(self._by_perm.get(permission))

    def decide_permission(self, permission: str) -> Decision:
        grants = self._by_perm.get(permission)
        if permission not in PERMISSIONS:
            return Decision(False, f"unknown permission {permission!r}")
        if grants:
            return Decision(True, f"rbac.roles.{grants[0].name}.permissions grants {permission}")
        return Decision(False, self._no_grant(permission))

    def completion_allowed(self) -> bool:
        return self.can(COMPLETION)

    def _no_grant(self, permission: str) -> str:
        if not self.roles:
            return f"no role grants {permission} (no roles)"
        if self.unknown_roles and not self.effective_roles:
            return f"no role grants {permission} (unknown roles: {', '.join(self.unknown_roles)})"
        return f"no role grants {permission}"

    # -- tools and prompts (named items exposed by a backend) ------------------------------

    def _named(self, permission: str, kind: str, exposed: str, backend: str, original: str) -> bool:
        key = (permission, exposed, backend, original)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        result = self._eval_named(permission, kind, exposed, backend, original)
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = result
        return result

    def _eval_named(self, permission: str, kind: str, exposed: str, backend: str, original: str) -> bool:
        grants = self._by_perm.get(permission)
        if not grants:
            return False
        qualified = f"{backend}:{original}"
        deny = self._deny_tools if kind == "tools" else self._deny_prompts
        if self._deny_backends.match(backend) or deny.match(exposed, qualified):
            return False
        for g in grants:
            allow = g.allow_tools if kind == "tools" else g.allow_prompts
            if g.allow_backends.match(backend) and allow.match(exposed, qualified):
                return True
        return False

    def tool_visible(self, exposed: str, backend: str, original: str) -> bool:
        return self._named(TOOLS_LIST, "tools", exposed, backend, original)

    def tool_callable(self, exposed: str, backend: str, original: str) -> bool:
        return self._named(TOOLS_CALL, "tools", exposed, backend, original)

    def prompt_visible(self, exposed: str, backend: str, original: str) -> bool:
        return self._named(PROMPTS_LIST, "prompts", exposed, backend, original)

    def prompt_gettable(self, exposed: str, backend: str, original: str) -> bool:
        return self._named(PROMPTS_GET, "prompts", exposed, backend, original)

    def explain_tool(
        self, exposed: str, backend: str, original: str, permission: str = TOOLS_CALL
    ) -> list[tuple[str, Decision]]:
        """Every check for ``permission`` on the tool, in order: permission, deny_backends,
        deny_tools, allow_backends, allow_tools. Allowed iff every step is allowed."""
        return self._explain_named(permission, "tools", exposed, backend, original)

    def explain_prompt(
        self, exposed: str, backend: str, original: str, permission: str = PROMPTS_GET
    ) -> list[tuple[str, Decision]]:
        return self._explain_named(permission, "prompts", exposed, backend, original)

    def decide_tool(self, permission: str, exposed: str, backend: str, original: str) -> Decision:
        return _verdict(self._explain_named(permission, "tools", exposed, backend, original))

    def decide_prompt(self, permission: str, exposed: str, backend: str, original: str) -> Decision:
        return _verdict(self._explain_named(permission, "prompts", exposed, backend, original))

    def _explain_named(
        self, permission: str, kind: str, exposed: str, backend: str, original: str
    ) -> list[tuple[str, Decision]]:
        qualified = f"{backend}:{original}"
        grants = self._by_perm.get(permission, ())
        steps: list[tuple[str, Decision]] = [("permission", self.decide_permission(permission))]
        steps.append(("deny_backends", _deny_step(self._deny_backends, "deny_backends", backend)))
        deny = self._deny_tools if kind == "tools" else self._deny_prompts
        steps.append((f"deny_{kind}", _deny_step(deny, f"deny_{kind}", exposed, qualified)))

        passing: list[tuple[_Role, tuple[str, str]]] = []
        for g in grants:
            m = g.allow_backends.first_match(backend)
            if m is not None:
                passing.append((g, m))
        if passing:
            pattern, origin = passing[0][1]
            steps.append(("allow_backends", Decision(True, f"{origin}: {pattern!r}")))
        else:
            rule = f"no role granting {permission} allows backend {backend!r}"
            steps.append(("allow_backends", Decision(False, rule)))
        for g, _ in passing:
            allow = g.allow_tools if kind == "tools" else g.allow_prompts
            m = allow.first_match(exposed, qualified)
            if m is not None:
                steps.append((f"allow_{kind}", Decision(True, f"{m[1]}: {m[0]!r}")))
                break
        else:
            what = kind[:-1]
            steps.append(
                (
                    f"allow_{kind}",
                    Decision(
                        False,
                        f"no role granting {permission} on backend {backend!r} allows {what} {exposed!r}",
                    ),
                )
            )
        return steps

    # -- resources -------------------------------------------------------------------------

    def _resource(self, permission: str, uri: str, backend: str) -> bool:
        key = (permission, uri, backend)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        result = self._eval_resource(permission, uri, backend)
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = result
        return result

    def _eval_resource(self, permission: str, uri: str, backend: str) -> bool:
        grants = self._by_perm.get(permission)
        if not grants or self._deny_backends.match(backend):
            return False
        forms = uri_forms(uri)
        deny = self._deny_resources
        if deny and (deny.match(forms[0]) or deny.match(forms[1]) or deny.match(forms[2])):
            return False
        for g in grants:
            if (
                g.allow_backends.match(backend)
                and g.allow_resources.match(forms[0])
                and g.allow_resources.match(forms[1])
            ):
                return True
        return False

    def resource_visible(self, uri: str, backend: str) -> bool:
        return self._resource(RESOURCES_LIST, uri, backend)

    def resource_readable(self, uri: str, backend: str) -> bool:
        return self._resource(RESOURCES_READ, uri, backend)

    def decide_resource(self, permission: str, uri: str, backend: str) -> Decision:
        return _verdict(self._explain_resource(permission, uri, backend))

    def explain_resource(
        self, uri: str, backend: str, permission: str = RESOURCES_READ
    ) -> list[tuple[str, Decision]]:
        return self._explain_resource(permission, uri, backend)

    def _explain_resource(self, permission: str, uri: str, backend: str) -> list[tuple[str, Decision]]:
        grants = self._by_perm.get(permission, ())
        steps: list[tuple[str, Decision]] = [("permission", self.decide_permission(permission))]
        steps.append(("deny_backends", _deny_step(self._deny_backends, "deny_backends", backend)))
        forms = uri_forms(uri)
        denied = _OK
        for form in dict.fromkeys(forms):
            d = _deny_step(self._deny_resources, "deny_resources", form)
            if not d.allowed:
                denied = d if form == uri else Decision(False, f"{d.rule} (matched normalised {form!r})")
                break
        steps.append(("deny_resources", denied))
        passing = [g for g in grants if g.allow_backends.match(backend)]
        steps.append(
            (
                "allow_backends",
                Decision(True, f"rbac.roles.{passing[0].name}.allow_backends")
                if passing
                else Decision(False, f"no role granting {permission} allows backend {backend!r}"),
            )
        )
        given, normal = forms[0], forms[1]
        for g in passing:
            if g.allow_resources.match(given) and g.allow_resources.match(normal):
                m = g.allow_resources.first_match(given)
                rule = f"{m[1]}: {m[0]!r}" if m else f"rbac.roles.{g.name}.allow_resources"
                steps.append(("allow_resources", Decision(True, rule)))
                break
        else:
            steps.append(
                (
                    "allow_resources",
                    Decision(
                        False,
                        f"no role granting {permission} on backend {backend!r} allows resource {uri!r}"
                        + (f" (normalised {normal!r})" if normal != given else ""),
                    ),
                )
            )
        return steps


_OK: Final = Decision(True, "")


def _deny_step(deny: GlobSet, key: str, name: str, qualified: str | None = None) -> Decision:
    if deny and deny.match(name, qualified):
        m = deny.first_match(name, qualified)
        if m is not None:
            return Decision(False, f"{m[1]}: {m[0]!r}")
        return Decision(False, f"{key} matches {name!r}")
    return Decision(True, f"no {key} pattern matches")


def _verdict(steps: list[tuple[str, Decision]]) -> Decision:
    for _, d in steps:
        if not d.allowed:
            return d
    return steps[-1][1]
