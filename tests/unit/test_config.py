from __future__ import annotations

import dataclasses
import logging
import os
import textwrap
import typing
from pathlib import Path
from types import MappingProxyType

import pytest

from sentinel_gw import config_schema
from sentinel_gw.config import (
    ConfigError,
    config_reference_markdown,
    env_file_warnings,
    environment_for,
    find_config_path,
    load_config,
    load_env_file,
    parse_config,
    resolve_path,
    summarize,
)
from sentinel_gw.config_schema import Config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "sentinel.toml.example"

BACKEND = '[[backends]]\nname = "a"\ntype = "stdio"\ncommand = "x"\n'
ROLES = "[rbac.roles.admin]\npermissions = ['*']\n[rbac.roles.viewer]\npermissions = ['tools.list']\n"


def write(tmp_path: Path, text: str, name: str = "sentinel.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def load_text(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text), environ={})


def error_for(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.file == str(path)
    return info.value


def assert_error(err: ConfigError, key: str, reason: str) -> None:
    matches = [e for e in err.errors if e.key == key]
    assert matches, f"no error for {key!r}; got: {err}"
    assert any(reason in e.reason for e in matches), f"{reason!r} not in {[e.reason for e in matches]}"


# ---------------------------------------------------------------------------------------------
# The shipped example


def test_example_loads_without_any_environment() -> None:
    cfg = load_config(EXAMPLE, environ={})
    assert [b.name for b in cfg.backends] == ["demo"]
    demo = cfg.backends[0]
    assert (demo.type, demo.command, demo.args) == ("stdio", "sentinel-gw", ("demo-server",))
    assert cfg.auth.mode == "jwt"
    assert cfg.auth.secret_env == "SENTINEL_JWT_SECRET"
    assert set(cfg.rbac.roles) == {"admin", "developer", "viewer"}
    assert cfg.rbac.roles["admin"].permissions == ("*",)
    assert cfg.rbac.roles["developer"].deny_tools
    assert "tools.call" not in cfg.rbac.roles["viewer"].permissions
    assert cfg.source == str(EXAMPLE)
    assert cfg.base_dir == str(REPO)


def _leaf_keys(cls: type) -> set[str]:
    keys: set[str] = set()
    hints = typing.get_type_hints(cls, globalns=vars(config_schema))
    for f in dataclasses.fields(cls):
        if cls is Config and f.name in ("source", "base_dir"):
            continue
        keys.add(f.name)
        tp = hints[f.name]
        for arg in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(arg):
                keys |= _leaf_keys(typing.cast(type, arg))
    return keys


def test_example_mentions_every_key() -> None:
    text = EXAMPLE.read_text()
    missing = [
        k
        for k in sorted(_leaf_keys(Config))
        if not any(s in text for s in (f"{k} =", f".{k}]", f"[{k}]", f"[{k}."))
    ]
    assert not missing


def test_example_effective_values_are_defaults_outside_demo_sections() -> None:
    cfg = load_config(EXAMPLE, environ={})
    assert cfg.gateway == config_schema.GatewayConfig()
    assert cfg.audit == config_schema.AuditConfig()
    assert cfg.backends[0].restart == config_schema.RestartPolicy()


# ---------------------------------------------------------------------------------------------
# Unknown keys


UNKNOWN_KEYS = [
    ("[gatway]\nname = 'x'\n", "gatway", "did you mean 'gateway'?"),
    ("[[backend]]\nname = 'a'\n", "backend", "did you mean 'backends'?"),
    ("[gateway]\nnmae = 'x'\n", "gateway.nmae", "did you mean 'name'?"),
    ("[auth]\nalgorithm = ['HS256']\n", "auth.algorithm", "did you mean 'algorithms'?"),
    (BACKEND + "[backends.restart]\nmax_restart = 3\n", "backends[0].restart.max_restart", "'max_restarts'"),
    ("[rbac.roles.viewer]\npermission = ['tools.list']\n", "rbac.roles.viewer.permission", "'permissions'"),
    ("[rate_limits.tools.x]\nrequest = 3\n", "rate_limits.tools.x.request", "'requests'"),
    ("[gateway]\nzzz = 1\n", "gateway.zzz", "valid keys: name, log_level"),
    ("source = 'elsewhere'\n", "source", "not a configuration key"),
    ("base_dir = '/'\n", "base_dir", "not a configuration key"),
    ("[postgres]\nurl_env = 'X'\n", "postgres", "audit.postgres_url_env"),
    ("[auth]\njwt_secret_env = 'X'\n", "auth.jwt_secret_env", "renamed to 'secret_env'"),
    ("[rbac.roles.dev]\ndenied_tools = []\n", "rbac.roles.dev.denied_tools", "'deny_tools'"),
    ('[rbac.roles."a b"]\nfoo = 1\n', 'rbac.roles."a b".foo', "unknown key"),
]


@pytest.mark.parametrize(("text", "key", "reason"), UNKNOWN_KEYS)
def test_unknown_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    assert_error(error_for(tmp_path, text), key, reason)


def test_unknown_key_in_second_backend_message_format(tmp_path: Path) -> None:
    err = error_for(
        tmp_path, BACKEND + '[[backends]]\nname = "b"\ntype = "stdio"\ncommand = "y"\ntimeout_sec = 5\n'
    )
    assert (err.key, err.reason) == ("backends[1].timeout_sec", "unknown key (did you mean 'timeout_secs'?)")
    expected = "backends[1].timeout_sec: unknown key (did you mean 'timeout_secs'?)"
    assert str(err) == f"{tmp_path / 'sentinel.toml'}: {expected}"


# ---------------------------------------------------------------------------------------------
# Types


WRONG_TYPES = [
    ("[gateway]\npage_size = true\n", "gateway.page_size", "expected an integer, got a boolean"),
    (BACKEND + "enabled = 1\n", "backends[0].enabled", "expected a boolean, got an integer"),
    (BACKEND + "args = '-m x'\n", "backends[0].args", "expected an array, got a string"),
    (BACKEND + "max_in_flight = 1.5\n", "backends[0].max_in_flight", "expected an integer, got a float"),
    (BACKEND + "max_in_flight = 2.0\n", "backends[0].max_in_flight", "expected an integer, got a float"),
    (BACKEND + "timeout_secs = '60'\n", "backends[0].timeout_secs", "expected a number, got a string"),
    (BACKEND + "timeout_secs = true\n", "backends[0].timeout_secs", "expected a number, got a boolean"),
    (BACKEND + "timeout_secs = nan\n", "backends[0].timeout_secs", "finite"),
    (BACKEND + "timeout_secs = inf\n", "backends[0].timeout_secs", "finite"),
    (BACKEND + "args = ['a', 1]\n", "backends[0].args[1]", "expected a string, got an integer"),
    (BACKEND + "env = { A = 1 }\n", "backends[0].env.A", "expected a string, got an integer"),
    (BACKEND + "env = ['A']\n", "backends[0].env", "expected a table, got an array"),
    (BACKEND + 'env = { A = "x\\u0000y" }\n', "backends[0].env.A", "NUL"),
    ("[backends]\nname = 'a'\n", "backends", "expected an array of tables, got a table (write [[backends]]"),
    ("backends = 'a'\n", "backends", "expected an array of tables, got a string"),
    ("gateway = 1\n", "gateway", "expected a table, got an integer"),
    ("[rbac.roles]\nviewer = 1\n", "rbac.roles.viewer", "expected a table, got an integer"),
    ("[rbac]\nroles = []\n", "rbac.roles", "expected a table, got an array"),
    ("[gateway]\ninstructions = 1979-05-27\n", "gateway.instructions", "expected a string, got a date/time"),
    ("[rate_limits]\ndefault = 10\n", "rate_limits.default", "expected a table, got an integer"),
    ("[rbac.roles.v]\npermissions = 'tools.list'\n", "rbac.roles.v.permissions", "expected an array"),
]


@pytest.mark.parametrize(("text", "key", "reason"), WRONG_TYPES)
def test_wrong_type(tmp_path: Path, text: str, key: str, reason: str) -> None:
    assert_error(error_for(tmp_path, text), key, reason)


def test_integers_are_accepted_for_floats(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BACKEND + "timeout_secs = 90\n")
    assert cfg.backends[0].timeout_secs == 90.0
    assert type(cfg.backends[0].timeout_secs) is float


def test_containers_are_immutable(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BACKEND + "args = ['x']\nenv = { A = 'b' }\n" + ROLES)
    assert isinstance(cfg.backends, tuple)
    assert isinstance(cfg.backends[0].args, tuple)
    assert isinstance(cfg.backends[0].env, MappingProxyType)
    assert isinstance(cfg.rbac.roles, MappingProxyType)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.gateway.name = "x"  # type: ignore[misc]


LITERALS = [
    (
        "[gateway]\nlog_level = 'verbose'\n",
        "gateway.log_level",
        'one of "debug", "info", "warning", "error"; got "verbose"',
    ),
    ("[gateway]\nlog_format = 'xml'\n", "gateway.log_format", 'one of "text", "json"'),
    ('[[backends]]\nname = "a"\ntype = "sse"\n', "backends[0].type", 'one of "stdio", "http"; got "sse"'),
    ("[auth]\nmode = 'off'\n", "auth.mode", 'one of "jwt", "none"'),
    ("[rate_limits]\nalgorithm = 'fixed'\n", "rate_limits.algorithm", '"token_bucket", "sliding_window"'),
    ("[audit]\nargs = 3\n", "audit.args", 'one of "redacted", "full", "shape", "none"; got an integer'),
]


@pytest.mark.parametrize(("text", "key", "reason"), LITERALS)
def test_literal_violation(tmp_path: Path, text: str, key: str, reason: str) -> None:
    assert_error(error_for(tmp_path, text), key, reason)


MISSING = [
    ('[[backends]]\ntype = "stdio"\ncommand = "x"\n', "backends[0].name"),
    ('[[backends]]\nname = "a"\ncommand = "x"\n', "backends[0].type"),
    ("[rate_limits.default]\nwindow_secs = 1.0\n", "rate_limits.default.requests"),
    ("[rate_limits.roles.admin]\nburst = 1\n[rbac.roles.admin]\n", "rate_limits.roles.admin.requests"),
]


@pytest.mark.parametrize(("text", "key"), MISSING)
def test_missing_required(tmp_path: Path, text: str, key: str) -> None:
    assert_error(error_for(tmp_path, text), key, "required key missing")


# ---------------------------------------------------------------------------------------------
# Cross-field checks


def backend(extra: str, name: str = "a", type_: str = "stdio", command: str = "x") -> str:
    lines = [f'name = "{name}"', f'type = "{type_}"']
    if command:
        lines.append(f'command = "{command}"')
    return "[[backends]]\n" + "\n".join(lines) + "\n" + extra + "\n"


def http_backend(extra: str, name: str = "h") -> str:
    lines = [f'name = "{name}"', 'type = "http"']
    if "url =" not in extra:
        lines.append('url = "https://mcp.example/mcp"')
    return "[[backends]]\n" + "\n".join(lines) + "\n" + extra + "\n"


CROSS_FIELD = [
    # backends
    (backend("", name="a b"), "backends[0].name", "invalid backend name"),
    (backend("", name="x" * 65), "backends[0].name", "1-64 characters"),
    (backend("", name=""), "backends[0].name", "invalid backend name"),
    (
        backend("") + backend("", name="b") + backend("", name="a"),
        "backends[2].name",
        "already used by backends[0]",
    ),
    (backend("", command=""), "backends[0].command", 'required for type = "stdio"'),
    (backend('url = "https://x"'), "backends[0].url", 'only valid with type = "http"'),
    # http backends
    (backend("", type_="http", command=""), "backends[0].url", 'required for type = "http"'),
    (http_backend('url = "ftp://h/mcp"'), "backends[0].url", "http:// or https://"),
    (http_backend('url = "https:///mcp"'), "backends[0].url", "no host"),
    (http_backend('url = "https://u:p@h/mcp"'), "backends[0].url", "credentials in the URL"),
    (http_backend('url = "https://h/m cp"'), "backends[0].url", "without spaces"),
    (http_backend('url = "https://h:99999/mcp"'), "backends[0].url", "invalid URL"),
    (http_backend('command = "x"'), "backends[0].command", 'only valid with type = "stdio"'),
    (http_backend('env = { A = "b" }'), "backends[0].env", 'only valid with type = "stdio"'),
    (
        http_backend("[backends.restart]\nmax_restarts = 1"),
        "backends[0].restart",
        'only valid with type = "stdio"',
    ),
    (backend("retries = 3"), "backends[0].retries", 'only valid with type = "http"'),
    (backend('headers = { X = "1" }'), "backends[0].headers", 'only valid with type = "http"'),
    (backend('transport = "sse"'), "backends[0].transport", 'only valid with type = "http"'),
    (backend("[backends.tls]\nverify = false"), "backends[0].tls", 'only valid with type = "http"'),
    (http_backend('transport = "websocket"'), "backends[0].transport", '"auto", "streamable", "sse"'),
    (http_backend('era = "modern"\ntransport = "sse"'), "backends[0].era", "handshake-era only"),
    (http_backend('headers = { X = "a\\r\\nInjected: 1" }'), "backends[0].headers.X", "CR, LF"),
    (http_backend('headers = { X = "a\\nb" }'), "backends[0].headers.X", "CR, LF"),
    (http_backend('headers = { "Bad Name" = "1" }'), 'backends[0].headers."Bad Name"', "invalid header name"),
    (http_backend('headers = { Host = "evil" }'), "backends[0].headers.Host", "set by the gateway"),
    (
        http_backend('headers = { "mcp-session-id" = "s" }'),
        "backends[0].headers.mcp-session-id",
        "set by the gateway",
    ),
    (
        http_backend('headers_from_env = { "MCP-Protocol-Version" = "V" }'),
        "backends[0].headers_from_env.MCP-Protocol-Version",
        "set by the gateway",
    ),
    (
        http_backend('headers_from_env = { "Transfer-Encoding" = "V" }'),
        "backends[0].headers_from_env.Transfer-Encoding",
        "set by the gateway",
    ),
    (
        http_backend('headers_from_env = { Authorization = "MY-TOKEN" }'),
        "backends[0].headers_from_env.Authorization",
        "invalid source variable name",
    ),
    (
        http_backend('headers = { "x-a" = "1" }\nheaders_from_env = { "X-A" = "T" }'),
        "backends[0].headers_from_env.X-A",
        "also set in headers",
    ),
    (http_backend("retries = -1"), "backends[0].retries", "at least 0"),
    (http_backend("retries = 11"), "backends[0].retries", "at most 10"),
    (http_backend("connect_timeout_secs = 0"), "backends[0].connect_timeout_secs", "greater than 0"),
    (http_backend("health_interval_secs = -1"), "backends[0].health_interval_secs", "at least 0"),
    (http_backend('idempotent_tools = [""]'), "backends[0].idempotent_tools[0]", "must not be empty"),
    (http_backend("tool_timeouts = { t = 0 }"), "backends[0].tool_timeouts.t", "greater than 0"),
    (
        http_backend("tool_timeouts = { t = 700 }"),
        "backends[0].tool_timeouts.t",
        "must not exceed max_timeout_secs",
    ),
    (
        http_backend("timeout_secs = 100\nmax_timeout_secs = 50"),
        "backends[0].max_timeout_secs",
        "at least timeout_secs",
    ),
    (
        http_backend('url = "http://h/mcp"\n[backends.tls]\ncafile = "ca.pem"'),
        "backends[0].tls",
        "need an https:// url",
    ),
    (http_backend('[backends.tls]\nkeyfile = "k.pem"'), "backends[0].tls.keyfile", "needs tls.certfile"),
    (
        http_backend("[backends.breaker]\nfailure_threshold = 0"),
        "backends[0].breaker.failure_threshold",
        "at least 1",
    ),
    (http_backend("[backends.breaker]\nfailure_rate = 1.5"), "backends[0].breaker.failure_rate", "at most 1"),
    (
        http_backend("[backends.breaker]\nfailure_rate = 0"),
        "backends[0].breaker.failure_rate",
        "greater than 0",
    ),
    (http_backend("[backends.breaker]\nmin_calls = 0"), "backends[0].breaker.min_calls", "at least 1"),
    (
        http_backend("[backends.breaker]\nwindow_secs = 0"),
        "backends[0].breaker.window_secs",
        "greater than 0",
    ),
    (backend('prefix = "a.b"'), "backends[0].prefix", "invalid prefix"),
    (backend("timeout_secs = 0"), "backends[0].timeout_secs", "must be greater than 0, got 0"),
    (backend("startup_timeout_secs = -1.0"), "backends[0].startup_timeout_secs", "greater than 0"),
    (backend("max_in_flight = 0"), "backends[0].max_in_flight", "at least 1"),
    (backend('env = { "A-B" = "x" }'), "backends[0].env.A-B", "invalid environment variable name"),
    (backend('env = { "" = "x" }'), 'backends[0].env.""', "invalid environment variable name"),
    (backend('env_from = { KEY = "MY-KEY" }'), "backends[0].env_from.KEY", "invalid source variable name"),
    (
        backend('env_from = { "1BAD" = "X" }'),
        "backends[0].env_from.1BAD",
        "invalid environment variable name",
    ),
    (backend('inherit_env = ["OK", "NOT OK"]'), "backends[0].inherit_env[1]", "invalid environment variable"),
    (backend('args = ["a\\u0000"]'), "backends[0].args[0]", "NUL"),
    # restart policy
    (backend("[backends.restart]\nmax_restarts = -1"), "backends[0].restart.max_restarts", "at least 0"),
    (
        backend("[backends.restart]\nrestart_window_secs = 0"),
        "backends[0].restart.restart_window_secs",
        "greater",
    ),
    (
        backend("[backends.restart]\nbackoff_initial_secs = 10\nbackoff_max_secs = 5"),
        "backends[0].restart.backoff_initial_secs",
        "must not exceed backoff_max_secs",
    ),
    (backend("[backends.restart]\nbackoff_jitter = 1.5"), "backends[0].restart.backoff_jitter", "at most 1"),
    (
        backend("[backends.restart]\nbackoff_jitter = -0.1"),
        "backends[0].restart.backoff_jitter",
        "at least 0",
    ),
    # gateway
    ("[gateway]\nmax_message_bytes = 1023\n", "gateway.max_message_bytes", "at least 1024, got 1023"),
    ("[gateway]\npage_size = 0\n", "gateway.page_size", "at least 1"),
    ("[gateway]\nmax_in_flight_per_session = 0\n", "gateway.max_in_flight_per_session", "at least 1"),
    ("[gateway]\nclient_request_timeout_secs = 0\n", "gateway.client_request_timeout_secs", "greater than 0"),
    ("[gateway]\nshutdown_grace_secs = -1\n", "gateway.shutdown_grace_secs", "at least 0"),
    ("[gateway]\nname = 'my gateway'\n", "gateway.name", "invalid name"),
    ("[gateway]\nname = ''\n", "gateway.name", "invalid name"),
    # auth
    ("[auth]\nalgorithms = []\n", "auth.algorithms", "at least one algorithm"),
    ("[auth]\nalgorithms = ['none']\n", "auth.algorithms[0]", "'none' is never accepted"),
    ("[auth]\nalgorithms = ['HS256', 'NONE']\n", "auth.algorithms[1]", "'none' is never accepted"),
    ("[auth]\nalgorithms = ['HS257']\n", "auth.algorithms[0]", "did you mean 'HS256'?"),
    ("[auth]\nalgorithms = ['hs256']\n", "auth.algorithms[0]", "valid: HS256 HS384 HS512 RS256"),
    (
        "[auth]\nalgorithms = ['HS256', 'RS256']\npublic_key_file = 'k.pem'\n",
        "auth.algorithms",
        "key confusion",
    ),
    (
        "[auth]\nalgorithms = ['ES256']\n",
        "auth.public_key_file",
        "set public_key_file, jwks_file or jwks_url",
    ),
    ("[auth]\nsecret_env = ''\n", "auth.secret_env", "required for HS* algorithms"),
    ("[auth]\nsecret_env = 'MY SECRET'\n", "auth.secret_env", "invalid environment variable name"),
    ("[auth]\ntoken_env = '1X'\n", "auth.token_env", "invalid environment variable name"),
    ("[auth]\nalgorithms = ['RS256']\njwks_url = 'ftp://x'\n", "auth.jwks_url", "http:// or https://"),
    ("[auth]\nleeway_secs = -1\n", "auth.leeway_secs", "at least 0"),
    (
        "[auth]\nmode = 'none'\nanonymous_roles = ['ghost']\n" + ROLES,
        "auth.anonymous_roles[0]",
        "not defined",
    ),
    # rbac
    ('[rbac.roles."bad name"]\n', 'rbac.roles."bad name"', "invalid role name"),
    (
        "[rbac.roles.dev]\ninherits = ['viewr']\n" + ROLES,
        "rbac.roles.dev.inherits[0]",
        "did you mean 'viewer'?",
    ),
    (
        "[rbac.roles.a]\ninherits = ['b']\n[rbac.roles.b]\ninherits = ['a']\n",
        "rbac.roles.a.inherits",
        "a -> b -> a",
    ),
    ("[rbac.roles.a]\ninherits = ['a']\n", "rbac.roles.a.inherits", "inheritance cycle: a -> a"),
    (
        "[rbac.roles.a]\ninherits = ['b']\n[rbac.roles.b]\ninherits = ['c']\n"
        "[rbac.roles.c]\ninherits = ['a']\n",
        "rbac.roles.a.inherits",
        "a -> b -> c -> a",
    ),
    (
        "[rbac.roles.v]\npermissions = ['tools.exec']\n",
        "rbac.roles.v.permissions[0]",
        "did you mean 'tools.execute'?",
    ),
    (
        "[rbac.roles.v]\npermissions = ['tools.list', 'admin']\n",
        "rbac.roles.v.permissions[1]",
        "valid: tools.list tools.call resources.list resources.read prompts.list prompts.get completion *",
    ),
    # rate limits
    ("[rate_limits.default]\nrequests = -1\n", "rate_limits.default.requests", "at least 1"),
    (
        "[rate_limits.subject]\nrequests = 1\nwindow_secs = 0\n",
        "rate_limits.subject.window_secs",
        "greater than 0",
    ),
    ("[rate_limits.tools.t]\nrequests = 1\nburst = -1\n", "rate_limits.tools.t.burst", "at least 0"),
    (
        "[rate_limits.roles.ghost]\nrequests = 1\n" + ROLES,
        "rate_limits.roles.ghost",
        "role 'ghost' is not defined",
    ),
    (
        "[rate_limits.roles.viewr]\nrequests = 1\n" + ROLES,
        "rate_limits.roles.viewr",
        "did you mean 'viewer'?",
    ),
    # audit
    (
        "[audit]\nsinks = ['kafka']\n",
        "audit.sinks[0]",
        "unknown sink 'kafka'; valid: sqlite, jsonl, postgres",
    ),
    ("[audit]\nsinks = ['jsonl', 'jsonl']\n", "audit.sinks[1]", "duplicate sink"),
    ("[audit]\ntool_args = { t = 'secret' }\n", "audit.tool_args.t", '"redacted", "full", "shape", "none"'),
    ("[audit]\nqueue_size = 0\n", "audit.queue_size", "at least 1"),
    ("[audit]\nbatch_size = 500\nqueue_size = 100\n", "audit.batch_size", "must not exceed queue_size"),
    ("[audit]\nflush_interval_secs = 0\n", "audit.flush_interval_secs", "greater than 0"),
    ("[audit]\nsinks = ['postgres']\npostgres_url_env = ''\n", "audit.postgres_url_env", "required"),
]


@pytest.mark.parametrize(("text", "key", "reason"), CROSS_FIELD)
def test_cross_field(tmp_path: Path, text: str, key: str, reason: str) -> None:
    assert_error(error_for(tmp_path, text), key, reason)


VALID = [
    backend("timeout_secs = 0.5\nprefix = ''\nenv_from = { API_KEY = 'MY_API_KEY' }"),
    backend("enabled = false", name="A_b-9"),
    backend("[backends.restart]\nbackoff_initial_secs = 5\nbackoff_max_secs = 5\nbackoff_jitter = 0"),
    backend("[backends.restart]\nbackoff_jitter = 1\nmax_restarts = 0"),
    "[auth]\nalgorithms = ['RS256', 'ES256', 'EdDSA']\njwks_url = 'https://idp/jwks.json'\n",
    "[auth]\nalgorithms = ['HS256', 'HS512']\n",
    "[auth]\nmode = 'none'\nanonymous_roles = ['viewer']\n" + ROLES,
    "[auth]\nmode = 'none'\nalgorithms = ['PS256']\n",
    "[rbac.roles.'team.ops-1']\npermissions = ['tools.read', 'tools.execute', 'completion']\n",
    "[rbac.roles.a]\ninherits = ['b', 'c']\n[rbac.roles.b]\ninherits = ['c']\n[rbac.roles.c]\n",
    "[rate_limits.roles.viewer]\nrequests = 1\n" + ROLES,
    "[rate_limits.default]\nrequests = 10\n[rate_limits.subject]\nrequests = 100\nwindow_secs = 3600\n",
    "[audit]\nsinks = []\n",
    "[audit]\nsinks = ['sqlite', 'jsonl', 'postgres']\ntool_args = { a = 'full', b = 'none' }\n",
    "[gateway]\nmax_message_bytes = 1024\n",
    "",
    http_backend(""),
    http_backend('url = "http://127.0.0.1:8080/mcp"\ntransport = "sse"'),
    http_backend('url = "http://[::1]:8080/"\nheaders = { "X-Tenant" = "acme", Accept-Language = "en" }'),
    http_backend('headers_from_env = { Authorization = "BACKEND_TOKEN" }\nidempotent_tools = ["search"]'),
    http_backend("retries = 0\nhealth_interval_secs = 0\ntool_timeouts = { build = 600 }"),
    http_backend('[backends.tls]\ncafile = "ca.pem"\ncertfile = "c.pem"\nkeyfile = "k.pem"'),
    http_backend("[backends.breaker]\nfailure_rate = 1\ncooldown_secs = 0"),
    # stdio keys at their defaults on an http backend (and vice versa) are harmless
    http_backend('command = ""\nargs = []\nenv = {}'),
    backend('url = ""\nretries = 2\ntransport = "auto"\nheaders = {}'),
    backend("tool_timeouts = { slow = 5 }\nhealth_interval_secs = 5\n[backends.breaker]\nmin_calls = 3"),
]


@pytest.mark.parametrize("text", VALID)
def test_valid_edge_cases(tmp_path: Path, text: str) -> None:
    load_text(tmp_path, text)


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    err = error_for(tmp_path, "[gateway]\nnmae = 'x'\npage_size = 0\n" + backend("", command=""))
    keys = [e.key for e in err.errors]
    assert keys == ["gateway.nmae", "gateway.page_size", "backends[0].command"]
    assert len(str(err).splitlines()) == 3
    assert (err.key, err.reason) == ("gateway.nmae", "unknown key (did you mean 'name'?)")


def test_invalid_toml_names_file(tmp_path: Path) -> None:
    err = error_for(tmp_path, "[gateway\n")
    assert err.key == ""
    assert err.reason.startswith("invalid TOML")
    assert str(err).startswith(f"{tmp_path / 'sentinel.toml'}: invalid TOML")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("x = " + "1" * 5000 + "\n", "invalid TOML: Exceeds the limit"),  # int() refuses it: a ValueError
        ("x = " + "[" * 3000 + "]" * 3000 + "\n", "invalid TOML: nested too deeply"),  # RecursionError
    ],
)
def test_toml_that_breaks_the_parser_is_a_config_error(tmp_path: Path, text: str, reason: str) -> None:
    """Not only TOMLDecodeError: what tomllib raises otherwise is still a clean error, no traceback."""
    err = error_for(tmp_path, text)
    assert err.reason.startswith(reason), err.reason


def test_missing_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)
    (tmp_path / "bin.toml").write_bytes(b"x = '\xff'\n")
    with pytest.raises(ConfigError, match=r"UTF-8|invalid TOML"):
        load_config(tmp_path / "bin.toml")


def test_parse_config_with_mapping(tmp_path: Path) -> None:
    cfg = parse_config(
        {"backends": [{"name": "demo", "type": "stdio", "command": "python3", "cwd": "srv"}]},
        source="<embedded>",
        base_dir=str(tmp_path),
    )
    assert cfg.source == "<embedded>"
    assert cfg.backends[0].cwd == str(tmp_path / "srv")
    with pytest.raises(ConfigError) as info:
        parse_config({"gateway": {"nope": 1}}, source="<embedded>", base_dir=".")
    assert (
        str(info.value)
        == "<embedded>: gateway.nope: unknown key (valid keys: "
        + ", ".join(f.name for f in dataclasses.fields(config_schema.GatewayConfig))
        + ")"
    )


def test_config_error_str_without_key() -> None:
    assert str(ConfigError("f.toml", "", "boom")) == "f.toml: boom"
    assert str(ConfigError("f.toml", "a.b", "boom")) == "f.toml: a.b: boom"
    assert str(ConfigError(".env", "", "bad", line=3)) == ".env:3: bad"


# ---------------------------------------------------------------------------------------------
# Paths


def test_relative_paths_resolve_against_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(
        conf_dir,
        """
        [auth]
        algorithms = ["RS256"]
        public_key_file = "keys/pub.pem"
        jwks_file = "/abs/jwks.json"
        revocation_file = "../revoked.txt"
        [kill_switch]
        file = "kill.json"
        [audit]
        sinks = ["sqlite", "jsonl"]
        sqlite_path = "audit/a.db"
        jsonl_path = "-"
        spool_dir = "~/spool"
        [[backends]]
        name = "a"
        type = "stdio"
        command = "./run.sh"
        cwd = "servers/a"
        """,
    )
    cfg = load_config(path, environ={"HOME": "/home/u"})
    assert cfg.base_dir == str(conf_dir)
    assert cfg.auth.public_key_file == str(conf_dir / "keys/pub.pem")
    assert cfg.auth.jwks_file == "/abs/jwks.json"
    assert cfg.auth.revocation_file == str(tmp_path / "revoked.txt")
    assert cfg.kill_switch.file == str(conf_dir / "kill.json")
    assert cfg.audit.sqlite_path == str(conf_dir / "audit/a.db")
    assert cfg.audit.jsonl_path == "-"
    assert cfg.audit.spool_dir == "/home/u/spool"
    assert cfg.backends[0].cwd == str(conf_dir / "servers/a")
    assert cfg.backends[0].command == "./run.sh"
    assert cfg.audit.postgres_url_env == "SENTINEL_AUDIT_DATABASE_URL"
    assert cfg.kill_switch.tools == ()


def test_empty_paths_stay_empty(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BACKEND)
    assert cfg.backends[0].cwd == ""
    assert cfg.kill_switch.file == ""
    assert resolve_path(cfg, "") == ""
    assert resolve_path(cfg, "x/y") == str(tmp_path / "x/y")
    assert resolve_path(cfg, "/a/b") == "/a/b"
    assert resolve_path(cfg, "~/k", environ={"HOME": "/h"}) == "/h/k"


# ---------------------------------------------------------------------------------------------
# find_config_path


def test_find_config_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    xdg = tmp_path / "xdg"
    home = tmp_path / "home"
    for d in (cwd, xdg / "sentinel-gw", home / ".config" / "sentinel-gw"):
        d.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    explicit = write(tmp_path, "", "explicit.toml")
    from_env = write(tmp_path, "", "env.toml")
    local = write(cwd, "")
    in_xdg = write(xdg / "sentinel-gw", "")
    in_home = write(home / ".config" / "sentinel-gw", "")
    env = {"SENTINEL_CONFIG": str(from_env), "XDG_CONFIG_HOME": str(xdg), "HOME": str(home)}

    assert find_config_path(str(explicit), env) == str(explicit)
    assert find_config_path(None, env) == str(from_env)
    del env["SENTINEL_CONFIG"]
    assert find_config_path(None, env) == str(local)
    local.unlink()
    assert find_config_path(None, env) == str(in_xdg)
    del env["XDG_CONFIG_HOME"]
    assert find_config_path(None, env) == str(in_home)
    in_home.unlink()
    with pytest.raises(ConfigError) as info:
        find_config_path(None, env)
    message = str(info.value)
    assert "$SENTINEL_CONFIG (not set)" in message
    assert str(cwd / "sentinel.toml") in message
    assert str(home / ".config" / "sentinel-gw" / "sentinel.toml") in message
    assert in_xdg.exists()  # only looked at when XDG_CONFIG_HOME points there


def test_find_config_path_explicit_choices_never_fall_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "")
    with pytest.raises(ConfigError, match="--config") as info:
        find_config_path(str(tmp_path / "missing.toml"), {})
    assert info.value.file == str(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="SENTINEL_CONFIG"):
        find_config_path(None, {"SENTINEL_CONFIG": str(tmp_path / "missing.toml")})


def test_find_config_path_ignores_relative_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel" / "sentinel-gw").mkdir(parents=True)
    write(tmp_path / "rel" / "sentinel-gw", "")
    with pytest.raises(ConfigError):
        find_config_path(None, {"XDG_CONFIG_HOME": "rel", "HOME": str(tmp_path / "nohome")})


# ---------------------------------------------------------------------------------------------
# .env files


def test_load_env_file_syntax(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """\
        # a comment
        PLAIN=value
        export EXPORTED=yes
          SPACED = padded value{TRAILING}
        INLINE=abc # trailing comment
        HASH=abc#not-a-comment
        EMPTY=
        SINGLE='literal $HOME \\n # kept'
        DOUBLE="a\\nb \\"q\\" \\\\ $HOME" # comment
        DQ_HASH="x # y"
        NOINTERP=$PLAIN
        DUP=first
        DUP=second
        """.replace("{TRAILING}", "   "),
        ".env",
    )
    assert load_env_file(p) == {
        "PLAIN": "value",
        "EXPORTED": "yes",
        "SPACED": "padded value",
        "INLINE": "abc",
        "HASH": "abc#not-a-comment",
        "EMPTY": "",
        "SINGLE": "literal $HOME \\n # kept",
        "DOUBLE": 'a\nb "q" \\ $HOME',
        "DQ_HASH": "x # y",
        "NOINTERP": "$PLAIN",
        "DUP": "second",
    }


def test_load_env_file_crlf_and_bom(tmp_path: Path) -> None:
    p = tmp_path / ".env"
    p.write_bytes(b"\xef\xbb\xbfA=1\r\nB='2'\r\n")
    assert load_env_file(p) == {"A": "1", "B": "2"}


BAD_ENV_LINES = [
    "just some words",
    "1KEY=x",
    "KEY",
    "export KEY",
    "MY-KEY=x",
    "KEY='unterminated",
    'KEY="unterminated',
    "KEY='a' b",
    'KEY="a"b',
]


@pytest.mark.parametrize("bad", BAD_ENV_LINES)
def test_load_env_file_bad_line_names_file_and_line(tmp_path: Path, bad: str) -> None:
    p = tmp_path / ".env"
    p.write_text(f"# header\nGOOD=1\n{bad}\nLATER=2\n")
    with pytest.raises(ConfigError) as info:
        load_env_file(p)
    assert info.value.file == str(p)
    assert info.value.line == 3
    assert str(info.value).startswith(f"{p}:3: ")


def test_environment_for_process_env_wins(tmp_path: Path) -> None:
    config = write(tmp_path, "")
    (tmp_path / ".env").write_text("A=from-file\nB=from-file\n")
    (tmp_path / ".env").chmod(0o600)
    env = environment_for(config, None, {"A": "from-process"})
    assert env == {"A": "from-process", "B": "from-file"}


def test_environment_for_never_searches_upward_or_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("PARENT=1\n")
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    config = write(conf_dir, "")
    project = tmp_path / "project"
    project.mkdir()
    (project / ".env").write_text("PROJECT=1\n")
    monkeypatch.chdir(project)
    assert environment_for(config, None, {"X": "1"}) == {"X": "1"}


def test_environment_for_explicit_file(tmp_path: Path) -> None:
    config = write(tmp_path, "")
    (tmp_path / ".env").write_text("NEXT_TO_CONFIG=1\n")
    explicit = tmp_path / "other.env"
    explicit.write_text("EXPLICIT=1\n")
    assert environment_for(config, str(explicit), {}) == {"EXPLICIT": "1"}
    with pytest.raises(ConfigError, match="env file not found") as info:
        environment_for(config, str(tmp_path / "missing.env"), {})
    assert info.value.file == str(tmp_path / "missing.env")


def test_environment_for_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_TEST_MARKER", "1")
    assert environment_for(write(tmp_path, ""), None)["SENTINEL_TEST_MARKER"] == "1"


def test_env_file_permission_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = write(tmp_path, "")
    env_file = tmp_path / ".env"
    env_file.write_text("SECRET=s3cr3t-value\n")
    env_file.chmod(0o644)
    warnings = env_file_warnings(env_file)
    assert len(warnings) == 1
    assert "chmod 600" in warnings[0]
    assert "s3cr3t-value" not in warnings[0]
    with caplog.at_level(logging.WARNING, logger="sentinel_gw.config"):
        environment_for(config, None, {})
    assert "readable by group/others" in caplog.text
    env_file.chmod(0o600)
    assert env_file_warnings(env_file) == []


# ---------------------------------------------------------------------------------------------
# summarize and the reference


def test_summarize_shows_structure_but_no_values(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            BACKEND
            + """
            args = ["--port", "1"]
            prefix = "ctx"
            env = { LITERAL = "literal-value-xyz" }
            env_from = { CONTEXT7_API_KEY = "GATEWAY_CONTEXT7_KEY" }
            [rbac.roles.admin]
            permissions = ["*"]
            [rbac.roles.dev]
            permissions = ["tools.call"]
            inherits = ["admin"]
            deny_tools = ["*delete*"]
            [rate_limits.default]
            requests = 7
            [audit]
            sinks = ["jsonl", "postgres"]
            jsonl_path = "-"
            """,
        ),
        environ={"GATEWAY_CONTEXT7_KEY": "value-of-the-secret", "SENTINEL_JWT_SECRET": "jwt-secret-value"},
    )
    text = summarize(cfg)
    for expected in (
        "a: stdio, enabled, prefix ctx_",
        "command: x --port 1",
        "CONTEXT7_API_KEY <- $GATEWAY_CONTEXT7_KEY",
        "env: LITERAL (values not shown)",
        "algorithms: HS256",
        "$SENTINEL_JWT_SECRET",
        "dev: tools.call",
        "inherits: admin",
        "deny *delete*",
        "7 per 60s",
        "sinks jsonl, postgres",
        "$SENTINEL_AUDIT_DATABASE_URL",
        "Kill switch",
    ):
        assert expected in text, expected
    for secret in ("literal-value-xyz", "value-of-the-secret", "jwt-secret-value"):
        assert secret not in text


def test_summarize_warns_about_unintended_settings(tmp_path: Path) -> None:
    text = summarize(load_text(tmp_path, "[auth]\nmode = 'none'\n[audit]\nsinks = []\n"))
    assert "every request will be denied" in text
    assert 'auth.mode = "none"' in text
    assert "no enabled backends" in text
    assert "nothing is audited" in text


def test_reference_covers_every_key() -> None:
    md = config_reference_markdown()
    for key in (
        "`gateway.max_message_bytes`",
        "`backends[].restart.backoff_jitter`",
        "`rbac.roles.<role>.deny_tools`",
        "`rate_limits.tools.<tool>.burst`",
        "`rate_limits.default.requests`",
        "`audit.tool_args`",
        "`kill_switch.file`",
    ):
        assert key in md
    assert "`source`" not in md and "base_dir" not in md
    assert "**required**" in md
    for key in _leaf_keys(Config):
        assert f".{key}`" in md or f"[{key}]" in md, key


def test_docs_configuration_is_up_to_date() -> None:
    doc = (REPO / "docs" / "CONFIGURATION.md").read_text()
    assert config_reference_markdown() in doc, "regenerate docs/CONFIGURATION.md"


def test_no_secret_environment_is_read_while_loading(tmp_path: Path) -> None:
    class Guard(dict[str, str]):
        def __getitem__(self, key: str) -> str:
            raise AssertionError(f"loader read {key}")

        def get(self, key: str, default: object = None) -> typing.Any:
            assert key == "HOME", f"loader read {key}"
            return os.environ.get(key, default)

    load_config(EXAMPLE, environ=Guard())


def test_http_backend_values_and_paths(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        http_backend(
            'headers_from_env = { Authorization = "BACKEND_TOKEN" }\n'
            'tool_timeouts = { build = 300 }\nidempotent_tools = ["search"]\n'
            '[backends.tls]\ncafile = "certs/ca.pem"\n[backends.breaker]\ncooldown_secs = 5'
        ),
    )
    b = cfg.backends[0]
    assert (b.type, b.url, b.transport, b.retries) == ("http", "https://mcp.example/mcp", "auto", 2)
    assert dict(b.headers_from_env) == {"Authorization": "BACKEND_TOKEN"}
    assert b.tool_timeouts["build"] == 300.0 and type(b.tool_timeouts["build"]) is float
    assert b.idempotent_tools == ("search",)
    assert b.tls.cafile == str(tmp_path / "certs" / "ca.pem")
    assert b.breaker == config_schema.BreakerConfig(cooldown_secs=5.0)


def test_legacy_breaker_keys_point_to_the_new_table(tmp_path: Path) -> None:
    err = error_for(tmp_path, http_backend("circuit_breaker_threshold = 3"))
    assert_error(err, "backends[0].circuit_breaker_threshold", "[backends.breaker] failure_threshold")


def test_http_warnings_and_summary_hide_secrets(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        http_backend('url = "http://10.1.2.3/mcp"\nheaders = { Authorization = "Bearer literal-secret" }')
        + http_backend('url = "http://localhost:9000/mcp"', name="local")
        + http_backend(
            'headers_from_env = { "X-Api-Key" = "SEARCH_KEY" }\n[backends.tls]\nverify = false', name="s"
        )
        + ROLES,
    )
    text = summarize(cfg)
    assert "literal-secret" not in text
    assert "plain http:// to 10.1.2.3" in text
    assert "plain http:// to localhost" not in text
    assert "looks like a credential" in text
    assert "tls.verify = false" in text
    assert "X-Api-Key <- $SEARCH_KEY" in text
    assert "transport auto" in text
