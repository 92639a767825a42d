"""Redaction of audit arguments and error text: secret keys, credential values, size caps, shapes."""

from __future__ import annotations

import json

import pytest

from sentinel_gw.ops.redact import REDACTED, is_secret_key, redact_args, redact_text

GH = "ghp_" + "A1b2C3d4E5" * 4
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nq3k9Zl0\n-----END RSA PRIVATE KEY-----"


def size(obj: object) -> int:
    return len(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode())


# --- keys ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "password", "Password", "db_password", "DB_PASSWORD", "passwd", "pwd", "passphrase",
        "api_key", "apiKey", "APIKey", "x-api-key", "X-Api-Key", "apikey", "access_key",
        "aws_secret_access_key", "private_key", "privateKey", "client_secret", "clientSecret",
        "refresh_token", "accessToken", "Authorization", "auth", "authToken", "cookie", "Set-Cookie",
        "session", "sessionId", "session_id", "credentials", "signature", "bearer", "token",
        "github_token", "jwt", "secret", "dbpassword", "ssh_key", "signing.key",
    ],
)  # fmt: skip
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)
    assert redact_args({key: "hunter2"}, "redacted") == {key: REDACTED}


@pytest.mark.parametrize(
    "key",
    [
        "author", "authors", "authority", "tokenizer", "max_tokens", "token_count", "tokens",
        "key", "keys", "monkey", "keyboard", "path", "name", "description", "secretary",
        "passage", "auth_type", "token_type", "password_min_length", "secret_name", "token_url",
        "session_timeout", "input_tokens", "",
    ],
)  # fmt: skip
def test_not_secret_keys(key: str) -> None:
    assert not is_secret_key(key)
    assert redact_args({key: "plain value"}, "redacted") == {key: "plain value"}


def test_secret_key_keeps_booleans_and_null_but_hides_containers() -> None:
    args = {
        "secret": True,
        "token": None,
        "auth": {"user": "ann", "pass": "x"},
        "cookies": ["a", "b"],
        "pin": 1,
    }
    assert redact_args(args, "redacted") == {
        "secret": True,
        "token": None,
        "auth": REDACTED,
        "cookies": REDACTED,
        "pin": 1,
    }
    assert redact_args({"password": 1234}, "redacted") == {"password": REDACTED}


# --- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (JWT, "jwt"),
        ("Bearer abcdefghijklmnopqrstuvwxyz", "bearer"),
        (PEM, "private_key"),
        ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg", "private_key"),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----",
            "private_key",
        ),
        ("AKIAIOSFODNN7EXAMPLE", "aws_access_key"),
        (GH, "github_token"),
        ("gho_" + "x9Y8z7W6v5" * 3, "github_token"),
        ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "github_token"),
        ("xoxb-123456789012-abcdefABCDEF", "slack_token"),
        ("xoxp-1-2-3-abcdefabcdef", "slack_token"),
        ("sk-" + "Ab3dEf6hIj9kLm2nOp5q" * 2, "api_key"),
        ("sk-ant-api03-" + "Zx8Yw7Vu6T" * 3, "api_key"),
        ("sk-proj-" + "Qa1Ws2Ed3R" * 3, "api_key"),
        ("0123456789abcdef0123456789abcdef", "hex"),
        ("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "hex"),
        ("Zk3Lq9XvB2mN7pR4sT1wY6uH8jK0aC5d", "high_entropy"),
        ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "high_entropy"),
    ],
)
def test_credential_values(value: str, kind: str) -> None:
    out = redact_args({"note": value}, "redacted")
    assert isinstance(out, dict)
    assert f"[REDACTED:{kind}]" in out["note"]
    # the secret part never survives, in any mode that keeps values
    tail = value[-12:]
    assert tail not in json.dumps(out)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "curl -H 'Authorization: Bearer abcdefghijkl' x",
            "curl -H 'Authorization: Bearer [REDACTED:bearer]' x",
        ),
        ("authorization=Basic dXNlcjpwYXNzd29yZA==", "authorization=Basic [REDACTED:authorization]"),
        (
            "connect postgres://app:s3cr3t@db:5432/x failed",
            "connect postgres://app:[REDACTED:password]@db:5432/x failed",
        ),
        ("login failed: password=hunter2 user=bob", "login failed: password=[REDACTED:secret] user=bob"),
        ('{"api_key": "abc123xyz"}', '{"api_key": [REDACTED:secret]}'),
        (f"token {JWT} expired", "token [REDACTED:jwt] expired"),
        (f"{PEM}\nafter", "[REDACTED:private_key]\nafter"),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "value",
    [
        "the author wrote a tokenizer",
        "/home/user/projects/app2/src/main.py",
        "ThisIsAVeryLongJavaClassNameFactory2",
        "AbstractSingletonProxyFactoryBean2024",
        "test_2024_report_final_version_v2_backup",
        "my-very-long-component-name-here-yes-42",
        "550e8400-e29b-41d4-a716-446655440000",
        "node_modules/typescript/lib/lib2015.d.ts",
        "Basic usage: pass --token-file to read it",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1",
        "short ghp_abc and sk-short",
        "https://example.com/a/b?page=2",
    ],
)
def test_no_false_positives(value: str) -> None:
    assert redact_args({"v": value}, "redacted") == {"v": value}


def test_full_keeps_hashes_but_not_credentials() -> None:
    sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    out = redact_args({"commit": sha, "cmd": f"push with {GH}", "password": "hunter2"}, "full")
    assert out == {"commit": sha, "cmd": "push with [REDACTED:github_token]", "password": REDACTED}
    assert redact_args({"commit": sha}, "redacted") == {"commit": "[REDACTED:hex]"}


def test_nested_structures_are_walked() -> None:
    args = {"a": [{"b": {"client_secret": "s", "ok": 1}}, JWT], "c": {"d": {"e": [GH]}}}
    assert redact_args(args, "redacted") == {
        "a": [{"b": {"client_secret": REDACTED, "ok": 1}}, "[REDACTED:jwt]"],
        "c": {"d": {"e": ["[REDACTED:github_token]"]}},
    }


def test_credential_in_a_key_is_redacted() -> None:
    # and the value under it is treated as secret too (the redacted key names a token)
    assert redact_args({GH: 1}, "full") == {"[REDACTED:github_token]": REDACTED}


def test_depth_cap() -> None:
    deep: object = "bottom"
    for _ in range(40):
        deep = {"x": deep}
    out = redact_args(deep, "redacted")
    text = json.dumps(out)
    assert "[DEPTH LIMIT]" in text
    assert "bottom" not in text


def test_scalars_and_odd_values() -> None:
    assert redact_args(None, "redacted") is None
    assert redact_args(5, "redacted") == 5
    assert redact_args([1.5, True, None], "full") == [1.5, True, None]
    assert redact_args({"x": float("nan")}, "redacted") == {"x": "nan"}
    assert redact_args({"n": 10**200}, "full") == {"n": "[INTEGER 665 bits]"}
    assert redact_args({1: "a"}, "redacted") == {"1": "a"}
    assert redact_args(("a", "b"), "redacted") == ["a", "b"]


# --- size ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["redacted", "full", "shape"])
@pytest.mark.parametrize("max_bytes", [64, 256, 4096])
def test_size_cap_holds(policy: str, max_bytes: int) -> None:
    args = {"text": "word " * 5000, "items": [{"k": i, "v": "x y " * 50} for i in range(300)]}
    out = redact_args(args, policy, max_bytes=max_bytes)  # type: ignore[arg-type]
    assert size(out) <= max_bytes


def test_long_string_is_truncated_with_marker() -> None:
    out = redact_args({"text": "hello world " * 1000}, "redacted", max_bytes=300)
    assert isinstance(out, dict)
    assert out["text"].startswith("hello world")
    assert "[TRUNCATED " in out["text"]
    assert size(out) <= 300


def test_truncation_never_keeps_a_partial_credential() -> None:
    # the key straddles the cut: none of it may survive
    text = "x " * 60 + GH
    out = redact_args({"t": text}, "full", max_bytes=140)
    assert isinstance(out, dict)
    assert "ghp_" not in out["t"] and "A1b2" not in out["t"]
    assert redact_text(text, max_bytes=125).startswith("x x")
    assert "ghp_" not in redact_text(text, max_bytes=125)


def test_too_large_becomes_a_summary() -> None:
    args = {f"k{i}": i for i in range(2000)}
    out = redact_args(args, "redacted", max_bytes=200)
    assert isinstance(out, dict)
    assert out["[TRUNCATED]"].endswith("bytes")
    assert out["keys"][0] == "k0"
    assert size(out) <= 200


def test_wide_containers_are_capped() -> None:
    out = redact_args(list(range(5000)), "full", max_bytes=10**6)
    assert isinstance(out, list)
    assert len(out) == 1001
    assert out[-1] == "[TRUNCATED 4000 more items]"


# --- shape and none ------------------------------------------------------------------------------


def test_shape() -> None:
    args = {"path": "/x", "opts": {"n": 3, "f": 1.5, "b": True, "z": None}, "list": ["a", "b", 1], "e": []}
    assert redact_args(args, "shape") == {
        "path": "string",
        "opts": {"n": "integer", "f": "number", "b": "boolean", "z": "null"},
        "list": ["string", "integer"],
        "e": [],
    }
    assert redact_args({"password": "hunter2"}, "shape") == {"password": "string"}


def test_none_and_unknown_policy() -> None:
    assert redact_args({"a": 1}, "none") is None
    with pytest.raises(ValueError, match="unknown audit args policy"):
        redact_args({"a": 1}, "everything")  # type: ignore[arg-type]


def test_redact_text_idempotent_and_non_str() -> None:
    once = redact_text(f"auth failed for Bearer {GH}")
    assert redact_text(once) == once
    assert redact_text(12345) == "12345"  # type: ignore[arg-type]


# --- the trigger pre-check ------------------------------------------------------------------------

_TRIGGER_WORDS = (
    "begin", "://", "eyj", "bearer", "authoriz", "akia", "asia", "agpa", "aida", "aroa", "anpa",
    "anva", "aipa", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat", "xox", "sk-", "sk_",
    "rk_", "aiza", "pass", "pwd", "secret", "token", "key",
)  # fmt: skip


def test_trigger_fast_path_agrees_with_the_case_insensitive_pattern() -> None:
    """ASCII text is checked lower-cased against a case-sensitive copy of the trigger list: it must
    answer exactly as the original (?i) pattern, whatever the case, else a credential could skip
    the precise detectors."""
    import random

    from sentinel_gw.ops.redact import _TRIGGER, _triggered

    rng = random.Random(8)
    samples = ["", "hello", "/usr/local/bin", "gh_x", "ghx_", "tk_", "s k", "Kelvin", "\u212aey"]
    for word in _TRIGGER_WORDS:
        for _ in range(6):
            cased = "".join(c.upper() if rng.random() < 0.5 else c for c in word)
            samples.append(f"{rng.choice(['', 'x', 'abc ', '__'])}{cased}{rng.choice(['', 'y', ' z'])}")
            samples.append(cased[:-1])  # one character short: no match from this word
    alphabet = "abegikprstxyo:/_-AEKPSTX \u017f\u212a\u0130"
    samples += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(3000)]
    disagree = [s for s in samples if _triggered(s) != (_TRIGGER.search(s) is not None)]
    assert not disagree, f"{len(disagree)} sample(s) disagree, e.g. {disagree[0][:40]!r}"
    assert _triggered("My PASSWORD is")
    assert _triggered("Bearer abc") and _triggered("ghS_abc") and _triggered("RK_live")
    assert not _triggered("hello world")
