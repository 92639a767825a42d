from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from sentinel_gw.config_schema import RbacConfig, RoleConfig
from sentinel_gw.policy.rbac import Decision, Rbac, normalize_uri, uri_forms


def rbac(**roles: RoleConfig) -> Rbac:
    return Rbac.compile(RbacConfig(roles=MappingProxyType(dict(roles))))


def role(*permissions: str, **kw: Any) -> RoleConfig:
    return RoleConfig(permissions=tuple(permissions), **{k: tuple(v) for k, v in kw.items()})


# ---------------------------------------------------------------------------------------------
# permissions, aliases, implications


@pytest.mark.parametrize(
    ("perms", "granted"),
    [
        ((), set()),
        (("tools.list",), {"tools.list"}),
        (("tools.read",), {"tools.list"}),
        (("tools.call",), {"tools.call", "tools.list"}),
        (("tools.execute",), {"tools.call", "tools.list"}),
        (("resources.read",), {"resources.read", "resources.list"}),
        (("resources.list",), {"resources.list"}),
        (("prompts.get",), {"prompts.get", "prompts.list"}),
        (("prompts.list",), {"prompts.list"}),
        (("completion",), {"completion"}),
        (
            ("*",),
            {"tools.list", "tools.call", "resources.list", "resources.read", "prompts.list", "prompts.get",
             "completion"},
        ),
    ],
)  # fmt: skip
def test_permissions_aliases_and_implications(perms: tuple[str, ...], granted: set[str]) -> None:
    view = rbac(r=role(*perms)).view(("r",))
    for p in ("tools.list", "tools.call", "resources.list", "resources.read", "prompts.list", "prompts.get",
              "completion"):  # fmt: skip
        assert view.can(p) is (p in granted), p
    assert view.completion_allowed() is ("completion" in granted)


def test_tools_list_does_not_imply_call() -> None:
    view = rbac(r=role("tools.list")).view(("r",))
    assert view.tool_visible("t", "b", "t")
    assert not view.tool_callable("t", "b", "t")


@pytest.mark.parametrize(
    ("roles", "match"),
    [
        ({"a": role("tools.write")}, r"rbac\.roles\.a\.permissions: unknown permission 'tools.write'"),
        ({"a": role("Tools.List")}, r"rbac\.roles\.a\.permissions"),
        ({"a": role(inherits=["ghost"])}, r"rbac\.roles\.a\.inherits: unknown role 'ghost'"),
        ({"a": role(inherits=["a"])}, r"rbac\.roles\.a\.inherits: inheritance cycle a -> a"),
        (
            {"a": role(inherits=["b"]), "b": role(inherits=["c"]), "c": role(inherits=["a"])},
            r"inherits: inheritance cycle a -> b -> c -> a",
        ),
        ({"a": role(allow_tools=[""])}, r"rbac\.roles\.a\.allow_tools"),
        ({"a": RoleConfig(deny_tools="fs_*")}, r"rbac\.roles\.a\.deny_tools"),  # type: ignore[arg-type]
    ],
)
def test_compile_errors(roles: dict[str, RoleConfig], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rbac(**roles)


# ---------------------------------------------------------------------------------------------
# inheritance


def test_inherits_chain_and_deny_inheritance() -> None:
    r = rbac(
        base=role("tools.list", deny_tools=["secret_*"]),
        dev=role("tools.call", inherits=["base"], allow_tools=["fs_*", "secret_x"]),
        lead=role("prompts.get", inherits=["dev"]),
    )
    assert r.effective_roles("lead") == ("lead", "dev", "base")
    lead = r.view(("lead",))
    assert lead.can("prompts.get") and lead.can("tools.call") and lead.can("tools.list")
    assert lead.tool_callable("fs_read", "fs", "read")
    assert not lead.tool_callable("secret_x", "s", "x")  # base's deny reaches lead through dev
    assert not lead.tool_visible("secret_x", "s", "x")
    assert lead.tool_visible("other", "b", "other")  # base lists everything (allow_tools default "*")
    assert not lead.tool_callable("other", "b", "other")  # but dev only calls fs_* / secret_x


def test_diamond_inheritance() -> None:
    r = rbac(
        root=role("completion"),
        a=role(inherits=["root"]),
        b=role(inherits=["root"], deny_backends=["prod"]),
        c=role("tools.call", inherits=["a", "b"]),
    )
    assert r.effective_roles("c") == ("c", "a", "root", "b")
    v = r.view(("c",))
    assert v.completion_allowed()
    assert not v.tool_callable("t", "prod", "t")
    assert v.tool_callable("t", "dev", "t")


def test_grants_do_not_cross_between_roles() -> None:
    # reader may list everything, runner may call fs_* only: together they may NOT call everything.
    r = rbac(reader=role("tools.list"), runner=role("tools.call", allow_tools=["fs_*"]))
    v = r.view(("reader", "runner"))
    assert v.tool_visible("db_drop", "db", "drop")
    assert not v.tool_callable("db_drop", "db", "drop")
    assert v.tool_callable("fs_read", "fs", "read")
    # The same through inheritance.
    r2 = rbac(reader=role("tools.list"), runner=role("tools.call", inherits=["reader"], allow_tools=["fs_*"]))
    v2 = r2.view(("runner",))
    assert not v2.tool_callable("db_drop", "db", "drop")
    assert v2.tool_visible("db_drop", "db", "drop")


def test_backend_and_tool_allows_must_come_from_the_same_role() -> None:
    r = rbac(
        a=role("tools.call", allow_backends=["fs"], allow_tools=["read"]),
        b=role("tools.call", allow_backends=["db"], allow_tools=["drop"]),
    )
    v = r.view(("a", "b"))
    assert v.tool_callable("read", "fs", "read")
    assert v.tool_callable("drop", "db", "drop")
    assert not v.tool_callable("drop", "fs", "drop")
    assert not v.tool_callable("read", "db", "read")


# ---------------------------------------------------------------------------------------------
# multiple roles, unknown roles


def test_multi_role_union_with_global_deny() -> None:
    r = rbac(
        ops=role("tools.call", allow_tools=["deploy_*"]),
        dev=role("tools.call", allow_tools=["fs_*"], deny_tools=["deploy_prod"]),
        res=role("resources.read"),
    )
    v = r.view(("ops", "dev", "res"))
    assert v.tool_callable("deploy_staging", "d", "staging")
    assert v.tool_callable("fs_read", "fs", "read")
    assert not v.tool_callable("deploy_prod", "d", "prod")  # dev's deny beats ops's allow
    assert v.resource_readable("file:///x", "fs")
    assert r.view(("ops",)).tool_callable("deploy_prod", "d", "prod")


def test_unknown_and_no_roles_grant_nothing() -> None:
    r = rbac(dev=role("*"))
    v = r.view(("ghost", "dev", "ghost"))
    assert v.unknown_roles == ("ghost",)
    assert v.tool_callable("t", "b", "t")
    ghost = r.view(("ghost",))
    assert ghost.unknown_roles == ("ghost",)
    assert not any(ghost.can(p) for p in ("tools.list", "tools.call", "resources.read", "completion"))
    assert "unknown roles: ghost" in ghost.decide_permission("tools.call").rule
    none = r.view(())
    assert not none.tool_visible("t", "b", "t")
    assert not none.resource_visible("file:///x", "b")
    assert not none.prompt_visible("p", "b", "p")
    assert not none.completion_allowed()
    assert rbac().view(("admin",)).unknown_roles == ("admin",)  # empty RBAC: even "admin" is nothing


def test_view_is_cached_per_roles_tuple() -> None:
    r = rbac(dev=role("*"))
    assert r.view(("dev",)) is r.view(("dev",))


# ---------------------------------------------------------------------------------------------
# bypass attempts on names

R_BYPASS = rbac(
    dev=role(
        "tools.call",
        allow_tools=["read_*", "fs:list", "exact_tool", "odd[1]"],
        deny_tools=["read_secret*", "fs:delete", "Danger", "a[b]"],
        deny_backends=["prod-*"],
    )
)
DEV = R_BYPASS.view(("dev",))


@pytest.mark.parametrize(
    ("exposed", "backend", "original", "callable_"),
    [
        ("read_file", "fs", "read_file", True),
        ("READ_file", "fs", "READ_file", False),  # case variant does not match the allow
        ("Read_file", "fs", "Read_file", False),
        ("r\u0435ad_file", "fs", "r\u0435ad_file", False),  # Cyrillic ie looks like "e"
        ("\uff52ead_file", "fs", "x", False),  # fullwidth "r": no NFKC folding
        ("exact_tool ", "fs", "exact_tool ", False),  # trailing space
        ("exact_tool\n", "fs", "x", False),  # trailing newline (regex $ would match)
        ("exact_tool", "fs", "exact_tool", True),
        ("exact_tool_2", "fs", "exact_tool_2", False),  # exact allow is not a prefix
        ("exact_too", "fs", "exact_too", False),
        ("read_secret", "fs", "read_secret", False),  # deny wins over allow read_*
        ("read_secrets_all", "fs", "x", False),
        ("read_secre", "fs", "read_secre", True),  # prefix of the deny only
        ("fs_list", "fs", "list", True),  # allowed through "backend:original"
        ("fs_list", "other", "list", False),  # same exposed name, other backend
        ("read_anything", "fs", "delete", False),  # deny on "fs:delete" whatever the exposed name
        ("read_anything", "fsx", "delete", True),  # ... but only for backend fs
        ("read_x", "prod-eu", "read_x", False),  # backend deny
        ("odd1", "fs", "odd1", True),  # "odd[1]" is a glob class ...
        ("odd[1]", "fs", "odd[1]", True),  # ... and also matches its literal self
        ("read_a[b]", "fs", "x", True),  # deny "a[b]" is anchored: no substring match
    ],
)
def test_name_bypass_attempts(exposed: str, backend: str, original: str, callable_: bool) -> None:
    assert DEV.tool_callable(exposed, backend, original) is callable_
    assert DEV.tool_callable(exposed, backend, original) is callable_  # memoised answer agrees


@pytest.mark.parametrize(
    ("deny", "name", "denied"),
    [
        ("a[b]", "ab", True),
        ("a[b]", "a[b]", True),  # literal match: a name with glob metachars is still denied
        ("a[b]", "a[", False),
        ("x?", "x1", True),
        ("x?", "x", False),
        ("x*", "x\nrm", True),  # * spans newlines (no regex line anchors)
        ("Danger", "danger", False),  # case-sensitive (fnmatchcase): names are exact
        ("fs_*", "fs_", True),
        ("fs", "fs_read", False),
        ("*:rm", "anything", True),  # qualified form: backend:rm
    ],
)
def test_deny_glob_semantics(deny: str, name: str, denied: bool) -> None:
    v = rbac(r=role("tools.call", deny_tools=[deny])).view(("r",))
    original = "rm" if deny == "*:rm" else name
    assert v.tool_callable(name, "b", original) is (not denied)


def test_qualified_and_exposed_forms_both_checked_for_deny() -> None:
    v = rbac(r=role("tools.call", deny_tools=["fs:write"])).view(("r",))
    assert not v.tool_callable("files_write", "fs", "write")  # renamed by prefix, still denied
    v2 = rbac(r=role("tools.call", deny_tools=["files_write"])).view(("r",))
    assert not v2.tool_callable("files_write", "fs", "write")
    assert v2.tool_callable("write", "fs", "write")


def test_original_names_with_colons_and_unicode() -> None:
    v = rbac(r=role("tools.call", deny_tools=["b:ns:*", "b:naïve"])).view(("r",))
    assert not v.tool_callable("x", "b", "ns:tool")
    assert not v.tool_callable("y", "b", "naïve")
    assert v.tool_callable("y", "b", "naive")  # no accent stripping: a different tool


# ---------------------------------------------------------------------------------------------
# prompts


def test_prompts() -> None:
    v = rbac(r=role("prompts.get", allow_prompts=["review_*", "gh:*"], deny_prompts=["review_secret"])).view(
        ("r",)
    )
    assert v.prompt_visible("review_pr", "gh", "review_pr")
    assert v.prompt_gettable("review_pr", "x", "review_pr")
    assert not v.prompt_gettable("review_secret", "gh", "review_secret")
    assert v.prompt_gettable("other", "gh", "other")
    assert not v.prompt_gettable("other", "x", "other")
    assert not v.tool_visible("review_pr", "gh", "review_pr")
    assert v.decide_prompt("prompts.get", "review_secret", "gh", "s") == Decision(
        False, "rbac.roles.r.deny_prompts: 'review_secret'"
    )


# ---------------------------------------------------------------------------------------------
# resources


@pytest.mark.parametrize(
    ("uri", "normal"),
    [
        ("file:///pub/../secret/x", "file:///secret/x"),
        ("file:///pub/./a/../b", "file:///pub/b"),
        ("file:///pub/%2e%2e/secret", "file:///secret"),
        ("file:///pub/%2E%2e/%73ecret", "file:///secret"),
        ("FILE:///Pub/X", "file:///Pub/X"),
        ("HTTP://Example.COM/A/%7euser", "http://example.com/A/~user"),
        ("http://u:P@Host:8080/a/../b?q=%41#f", "http://u:P@host:8080/b?q=A#f"),
        ("file:///a/%2Fb", "file:///a/%2Fb"),  # reserved escapes stay
        ("mem://x/../../..", "mem://x/"),
        ("urn:a:b", "urn:a:b"),
    ],
)
def test_normalize_uri(uri: str, normal: str) -> None:
    assert normalize_uri(uri) == normal


RES = rbac(
    r=role(
        "resources.read",
        allow_resources=["file:///pub/*", "mem://notes/*"],
        deny_resources=["file:///secret/*", "file:///pub/private/*"],
    )
).view(("r",))


@pytest.mark.parametrize(
    ("uri", "readable"),
    [
        ("file:///pub/readme.md", True),
        ("file:///secret/key", False),
        ("file:///pub/../secret/key", False),  # dot-segments cannot dodge the deny
        ("file:///pub/%2e%2e/secret/key", False),  # nor encoded dot-segments
        ("file:///pub/%252e%252e/secret/key", False),  # nor double-encoded ones
        ("file:///pub/..%2Fsecret/key", False),  # nor an encoded slash
        ("file:///pub/..\\secret\\key", False),  # nor backslashes
        ("file:////secret/key", False),  # nor doubled slashes
        ("file:///pub/../etc/passwd", False),  # escaping the allowed tree is not allowed either
        ("file:///pub/private/x", False),
        ("file:///pub/./private/x", False),
        ("file:///pub/%70rivate/x", False),  # %70 = 'p'
        ("FILE:///pub/readme.md", False),  # allow patterns are matched as written (normal form)
        ("file:///PUB/readme.md", False),
        ("mem://notes/a", True),
        ("mem://NOTES/a", False),  # the given form must match an allow as written
    ],
)
def test_resource_bypass_attempts(uri: str, readable: bool) -> None:
    assert RES.resource_readable(uri, "fs") is readable
    assert RES.resource_visible(uri, "fs") is readable


def test_uri_forms() -> None:
    given, normal, aggressive = uri_forms("file:///pub/..%2Fsecret/x")
    assert given == "file:///pub/..%2Fsecret/x"
    assert normal == "file:///pub/..%2Fsecret/x"
    assert aggressive == "file:///secret/x"


def test_resource_backend_rules() -> None:
    v = rbac(r=role("resources.list", allow_backends=["docs*"], deny_backends=["docs-internal"])).view(("r",))
    assert v.resource_visible("file:///a", "docs")
    assert not v.resource_visible("file:///a", "docs-internal")
    assert not v.resource_visible("file:///a", "fs")
    assert not v.resource_readable("file:///a", "docs")  # list does not imply read


# ---------------------------------------------------------------------------------------------
# explanations


def test_explain_tool_lists_each_check_in_order() -> None:
    r = rbac(
        dev=role(
            "tools.call", allow_backends=["fs", "git"], allow_tools=["fs_*", "git:*"], deny_tools=["fs_rm"]
        ),
        viewer=role("tools.list"),
    )
    dev = r.view(("dev",))
    steps = dev.explain_tool("fs_read", "fs", "read")
    assert [name for name, _ in steps] == [
        "permission", "deny_backends", "deny_tools", "allow_backends", "allow_tools"
    ]  # fmt: skip
    assert all(d.allowed for _, d in steps)
    assert steps[0][1].rule == "rbac.roles.dev.permissions grants tools.call"
    assert steps[3][1].rule == "rbac.roles.dev.allow_backends: 'fs'"
    assert steps[4][1].rule == "rbac.roles.dev.allow_tools: 'fs_*'"

    denied = dict(dev.explain_tool("fs_rm", "fs", "rm"))
    assert denied["deny_tools"] == Decision(False, "rbac.roles.dev.deny_tools: 'fs_rm'")
    assert dev.decide_tool("tools.call", "fs_rm", "fs", "rm") == Decision(
        False, "rbac.roles.dev.deny_tools: 'fs_rm'"
    )
    assert (
        dev.decide_tool("tools.call", "git_log", "git", "log").rule == "rbac.roles.dev.allow_tools: 'git:*'"
    )

    viewer = r.view(("viewer",))
    assert viewer.decide_tool("tools.call", "fs_read", "fs", "read") == Decision(
        False, "no role grants tools.call"
    )
    assert viewer.decide_tool("tools.list", "x", "db", "x").allowed
    other = dict(dev.explain_tool("db_q", "db", "q"))
    assert other["allow_backends"] == Decision(False, "no role granting tools.call allows backend 'db'")
    assert not dict(dev.explain_tool("misc", "fs", "misc"))["allow_tools"].allowed
    # the boolean and explained answers agree
    for args in [
        ("fs_read", "fs", "read"),
        ("fs_rm", "fs", "rm"),
        ("db_q", "db", "q"),
        ("git_x", "git", "x"),
    ]:
        assert dev.tool_callable(*args) is all(d.allowed for _, d in dev.explain_tool(*args))


def test_explain_resource_names_the_normalised_match() -> None:
    d = RES.decide_resource("resources.read", "file:///pub/../secret/key", "fs")
    assert not d.allowed
    assert d.rule.startswith("rbac.roles.r.deny_resources: 'file:///secret/*'")
    assert "normalised" in d.rule
    assert RES.decide_resource("resources.read", "file:///pub/a", "fs").allowed
    assert not RES.decide_resource("resources.read", "file:///etc/x", "fs").allowed


def test_memo_is_bounded() -> None:
    v = rbac(r=role("tools.call", allow_tools=["t*"])).view(("r",))
    for i in range(10_000):
        assert v.tool_callable(f"t{i}", "b", f"t{i}")
    assert len(v._memo) <= 4096
