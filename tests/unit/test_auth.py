from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sentinel_gw.config_schema import AuthConfig
from sentinel_gw.policy import auth as auth_mod
from sentinel_gw.policy.auth import (
    MAX_TOKEN_BYTES,
    AuthError,
    AuthSetupError,
    JwksCache,
    RevocationList,
    TokenVerifier,
    anonymous_identity,
    mint_token,
    parse_duration,
)

SECRET = "s3cret-value-that-is-long-enough-for-hs512-0123456789abcdefghijk"
ENV = {"SENTINEL_JWT_SECRET": SECRET}
NOW = 1_800_000_000.0
SUBJECT = "alice-private-subject"


# ---------------------------------------------------------------------------------------------
# helpers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(
    header: dict[str, Any], payload: dict[str, Any], key: bytes | None, digest: Any = hashlib.sha256
) -> str:
    """Hand-made JWS (HMAC or unsigned) so tests can build tokens pyjwt refuses to make."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = b"" if key is None else hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64(sig)}"


def claims(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": SUBJECT,
        "roles": ["dev"],
        "iss": "sentinel-gw",
        "aud": "sentinel-gw",
        "iat": int(NOW),
        "nbf": int(NOW),
        "exp": int(NOW) + 3600,
        "jti": "tok-1",
    }
    for k, v in over.items():
        if v is _DROP:
            base.pop(k, None)
        else:
            base[k] = v
    return base


_DROP = object()


def hs(
    payload: dict[str, Any], alg: str = "HS256", secret: str = SECRET, headers: dict[str, Any] | None = None
) -> str:
    return jwt.encode(payload, secret.encode(), algorithm=alg, headers=headers)


def verifier(tmp_path: Path | None = None, environ: dict[str, str] | None = None, **kw: Any) -> TokenVerifier:
    return TokenVerifier.from_config(
        AuthConfig(**kw), environ=ENV if environ is None else environ, base_dir=str(tmp_path or ".")
    )


def reason_of(v: TokenVerifier, token: str, now: float = NOW) -> str:
    with pytest.raises(AuthError) as ei:
        v.verify(token, now=now)
    return ei.value.reason


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def priv_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def pub_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_pub(tmp_path: Path, key: Any, name: str = "pub.pem") -> Path:
    p = tmp_path / name
    p.write_bytes(pub_pem(key))
    return p


def jwk_of(key: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
    algo: Any = {
        rsa.RSAPrivateKey: jwt.algorithms.RSAAlgorithm,
        ec.EllipticCurvePrivateKey: jwt.algorithms.ECAlgorithm,
        ed25519.Ed25519PrivateKey: jwt.algorithms.OKPAlgorithm,
    }
    cls = next(v for k, v in algo.items() if isinstance(key, k))
    d = cls.to_jwk(key.public_key(), as_dict=True)
    d["kid"] = kid
    if alg:
        d["alg"] = alg
    return d


# ---------------------------------------------------------------------------------------------
# happy path and identity


def test_valid_token_gives_identity() -> None:
    v = verifier()
    ident = v.verify(hs(claims(tenant="acme", extra={"nested": [1, 2]})), now=NOW)
    assert ident.subject == SUBJECT
    assert ident.roles == ("dev",)
    assert ident.tenant == "acme"
    assert ident.issuer == "sentinel-gw"
    assert ident.token_id == "tok-1"
    assert ident.expires_at == NOW + 3600
    assert isinstance(ident.claims, MappingProxyType)
    with pytest.raises(TypeError):
        ident.claims["sub"] = "x"  # type: ignore[index]
    assert ident.claims["extra"]["nested"] == (1, 2)  # type: ignore[index]


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_mint_verify_roundtrip_hmac(alg: str) -> None:
    v = verifier(algorithms=(alg,))
    token = mint_token(
        SECRET, subject="bob", roles=["ops", "dev"], ttl_secs=600, issuer="sentinel-gw",
        audience="sentinel-gw", algorithm=alg, tenant="t1", now=NOW,
    )  # fmt: skip
    ident = v.verify(token, now=NOW + 1)
    assert (ident.subject, ident.roles, ident.tenant, ident.expires_at) == (
        "bob",
        ("ops", "dev"),
        "t1",
        NOW + 600,
    )
    assert ident.token_id and len(ident.token_id) == 32
    assert jwt.get_unverified_header(token)["alg"] == alg


@pytest.mark.parametrize(
    ("alg", "keyname"), [("RS256", "rsa_key"), ("PS256", "rsa_key"), ("ES256", "ec_key"), ("EdDSA", "ed_key")]
)
def test_mint_verify_roundtrip_asymmetric(
    tmp_path: Path, request: pytest.FixtureRequest, alg: str, keyname: str
) -> None:
    key = request.getfixturevalue(keyname)
    write_pub(tmp_path, key)
    v = verifier(tmp_path, algorithms=(alg,), public_key_file="pub.pem")  # relative to base_dir
    token = mint_token(
        priv_pem(key), subject="bob", roles=["ops"], ttl_secs=60, issuer="sentinel-gw",
        audience="sentinel-gw", algorithm=alg, jti="fixed", now=NOW,
    )  # fmt: skip
    ident = v.verify(token, now=NOW)
    assert (ident.subject, ident.roles, ident.token_id) == ("bob", ("ops",), "fixed")


def test_mint_rejects_bad_input() -> None:
    base: dict[str, Any] = {"subject": "a", "roles": ["r"], "ttl_secs": 60, "issuer": "i", "audience": "a"}
    with pytest.raises(ValueError, match="32 bytes"):
        mint_token("short", **base)
    with pytest.raises(ValueError, match="64 bytes"):
        mint_token("y" * 40, **base, algorithm="HS512")
    with pytest.raises(ValueError, match="role"):
        mint_token(SECRET, **{**base, "roles": []})
    with pytest.raises(ValueError, match="ttl"):
        mint_token(SECRET, **{**base, "ttl_secs": 0})
    with pytest.raises(ValueError, match="algorithm"):
        mint_token(SECRET, **base, algorithm="none")


# ---------------------------------------------------------------------------------------------
# the attack list


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_rejected(alg: str) -> None:
    token = craft({"alg": alg, "typ": "JWT"}, claims(roles=["admin"]), None)
    assert reason_of(verifier(), token) == "bad_algorithm"


def test_alg_not_in_allow_list_rejected_before_decoding() -> None:
    v = verifier(algorithms=("HS512",))
    assert reason_of(v, hs(claims(), alg="HS256")) == "bad_algorithm"


def test_hs_rs_key_confusion_public_key_as_hmac_secret(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    pem = pub_pem(rsa_key)
    write_pub(tmp_path, rsa_key)
    forged = craft({"alg": "HS256", "typ": "JWT"}, claims(roles=["admin"]), pem)
    rs_verifier = verifier(tmp_path, algorithms=("RS256",), public_key_file="pub.pem")
    assert reason_of(rs_verifier, forged) == "bad_algorithm"
    # The same with the public key PEM configured as the HMAC secret: refused at startup.
    with pytest.raises(AuthSetupError, match="not an HMAC secret"):
        verifier(environ={"SENTINEL_JWT_SECRET": pem.decode()})


def test_hs_verifier_rejects_rs_tokens(rsa_key: rsa.RSAPrivateKey) -> None:
    token = jwt.encode(claims(), priv_pem(rsa_key), algorithm="RS256")
    assert reason_of(verifier(), token) == "bad_algorithm"


def test_mixing_hmac_and_asymmetric_algorithms_is_a_setup_error(tmp_path: Path, rsa_key: Any) -> None:
    write_pub(tmp_path, rsa_key)
    with pytest.raises(AuthSetupError, match="cannot be mixed"):
        verifier(tmp_path, algorithms=("HS256", "RS256"), public_key_file="pub.pem")


def test_asymmetric_alg_swap_between_key_types(tmp_path: Path, rsa_key: Any, ec_key: Any) -> None:
    write_pub(tmp_path, rsa_key)
    v = verifier(tmp_path, algorithms=("RS256", "ES256"), public_key_file="pub.pem")
    token = jwt.encode(claims(), priv_pem(ec_key), algorithm="ES256")
    assert reason_of(v, token) == "unknown_key"


def test_tampered_payload_rejected() -> None:
    token = hs(claims())
    head, _, sig = token.split(".")
    forged = f"{head}.{b64(json.dumps(claims(roles=['admin'])).encode())}.{sig}"
    assert reason_of(verifier(), forged) == "bad_signature"


def test_tampered_signature_rejected() -> None:
    token = hs(claims())
    head, body, sig = token.split(".")
    mid = len(sig) // 2
    flipped = sig[:mid] + ("A" if sig[mid] != "A" else "B") + sig[mid + 1 :]
    assert reason_of(verifier(), f"{head}.{body}.{flipped}") == "bad_signature"


def test_wrong_secret_rejected() -> None:
    assert (
        reason_of(verifier(), hs(claims(), secret="another-secret-that-is-long-enough-xyz-" + "z" * 30))
        == "bad_signature"
    )


@pytest.mark.parametrize(
    ("over", "now", "expected"),
    [
        ({"exp": int(NOW) - 31}, NOW, "expired"),  # beyond the 30 s leeway
        ({"exp": int(NOW) - 29}, NOW, None),  # within leeway
        ({"exp": int(NOW) - 30}, NOW, "expired"),  # boundary: exp + leeway reached
        ({"nbf": int(NOW) + 31}, NOW, "not_yet_valid"),
        ({"nbf": int(NOW) + 29}, NOW, None),
        ({"iat": int(NOW) + 31}, NOW, "issued_in_future"),
        ({"iat": int(NOW) + 29}, NOW, None),
        ({"iat": _DROP, "nbf": _DROP}, NOW, None),  # both optional
        ({"iss": "someone-else"}, NOW, "wrong_issuer"),
        ({"iss": _DROP}, NOW, "missing_claim"),
        ({"aud": "other"}, NOW, "wrong_audience"),
        ({"aud": ["other", "sentinel-gw"]}, NOW, None),
        ({"aud": ["other", "more"]}, NOW, "wrong_audience"),
        ({"aud": [1, "x"]}, NOW, "wrong_audience"),
        ({"aud": _DROP}, NOW, "missing_claim"),
        ({"sub": _DROP}, NOW, "missing_claim"),
        ({"sub": ""}, NOW, "missing_claim"),
        ({"sub": "   "}, NOW, "missing_claim"),
        ({"sub": 42}, NOW, "missing_claim"),
        ({"sub": "evil\nlog line"}, NOW, "invalid_claim"),
        ({"exp": _DROP}, NOW, "missing_claim"),
        ({"exp": "9999999999"}, NOW, "invalid_claim"),
        ({"exp": True}, NOW, "invalid_claim"),
        ({"exp": 10**400}, NOW, "invalid_claim"),
        ({"jti": 5}, NOW, "invalid_claim"),
        ({"tenant": ["a"]}, NOW, "invalid_claim"),
    ],
)
def test_claim_checks(over: dict[str, Any], now: float, expected: str | None) -> None:
    v = verifier()
    token = hs(claims(**over))
    if expected is None:
        assert v.verify(token, now=now).subject == SUBJECT
    else:
        assert reason_of(v, token, now) == expected


def test_non_string_issuer_rejected() -> None:
    token = craft({"alg": "HS256"}, claims(iss=["sentinel-gw"]), SECRET.encode())
    assert reason_of(verifier(), token) == "wrong_issuer"


def test_issuer_and_audience_checks_can_be_disabled() -> None:
    v = verifier(issuer="", audience="")
    assert v.verify(hs(claims(iss=_DROP, aud=_DROP)), now=NOW).issuer is None
    assert v.verify(hs(claims(aud="anything")), now=NOW).subject == SUBJECT


@pytest.mark.parametrize(
    ("over", "roles_claim", "expected"),
    [
        ({"roles": "ops"}, "roles", ("ops",)),
        ({"roles": ["ops", "dev", "ops", ""]}, "roles", ("ops", "dev")),
        ({"roles": _DROP, "role": "admin"}, "roles", ("admin",)),  # the original's claim
        ({"roles": _DROP, "groups": ["g1"]}, "groups", ("g1",)),
        ({"roles": [], "role": "admin"}, "roles", "no_roles"),  # present-but-empty does not fall back
        ({"roles": _DROP}, "roles", "no_roles"),
        ({"roles": ""}, "roles", "no_roles"),
        ({"roles": [""]}, "roles", "no_roles"),
        ({"roles": ["ok", 3]}, "roles", "invalid_claim"),
        ({"roles": {"a": 1}}, "roles", "invalid_claim"),
    ],
)
def test_roles_claim(over: dict[str, Any], roles_claim: str, expected: tuple[str, ...] | str) -> None:
    v = verifier(roles_claim=roles_claim)
    token = hs(claims(**over))
    if isinstance(expected, str):
        assert reason_of(v, token) == expected
    else:
        assert v.verify(token, now=NOW).roles == expected


def test_oversized_token_rejected_before_parsing() -> None:
    token = hs(claims(padding="x" * MAX_TOKEN_BYTES))
    assert len(token) > MAX_TOKEN_BYTES
    assert reason_of(verifier(), token) == "too_large"


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("", "missing_token"),
        ("abc", "malformed"),
        ("a.b", "malformed"),
        ("a.b.c.d", "malformed"),
        ("éé.b.c", "malformed"),
        (f"{b64(b'not json')}.{b64(b'{}')}.", "malformed"),
        (f"{b64(b'[1]')}.{b64(b'{}')}.", "malformed"),
        (f"{b64(json.dumps({'alg': 5}).encode())}.{b64(b'{}')}.", "bad_algorithm"),
    ],
)
def test_malformed_tokens(token: str, expected: str) -> None:
    assert reason_of(verifier(), token) == expected


def test_payload_not_an_object() -> None:
    token = craft({"alg": "HS256"}, [1, 2], SECRET.encode())  # type: ignore[arg-type]
    assert reason_of(verifier(), token) == "malformed"


def test_deeply_nested_claims_rejected() -> None:
    nested: Any = 1
    for _ in range(50):
        nested = [nested]
    assert reason_of(verifier(), hs(claims(x=nested))) == "malformed"


@pytest.mark.parametrize(
    ("over", "now", "expected"),
    [
        ({}, NOW, None),  # 3600 s == limit
        ({"exp": int(NOW) + 3601}, NOW, "too_long_lived"),  # exp - iat
        ({"iat": _DROP, "exp": int(NOW) + 7200}, NOW, "too_long_lived"),  # remaining lifetime, no iat
        ({"iat": _DROP, "exp": int(NOW) + 7200}, NOW + 3600, None),  # ... fine once within the limit
        ({"iat": int(NOW) - 7000, "exp": int(NOW) + 7200}, NOW, "too_long_lived"),  # back-dated iat
    ],
)
def test_lifetime_limit(over: dict[str, Any], now: float, expected: str | None) -> None:
    v = verifier(max_token_lifetime_secs=3600)
    token = hs(claims(**over))
    if expected is None:
        v.verify(token, now=now)
    else:
        assert reason_of(v, token, now) == expected


# ---------------------------------------------------------------------------------------------
# revocation


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_revoked_jti_and_later_edits(tmp_path: Path) -> None:
    clock = FakeClock()
    rev = tmp_path / "revoked.txt"
    rev.write_text("# revoked tokens\n\ntok-old   leaked in ticket 12\n")
    v = TokenVerifier.from_config(
        AuthConfig(revocation_file="revoked.txt"), environ=ENV, base_dir=str(tmp_path), clock=clock
    )
    assert reason_of(v, hs(claims(jti="tok-old"))) == "revoked"
    assert v.verify(hs(claims(jti="tok-1")), now=NOW).token_id == "tok-1"
    assert not v.is_revoked("tok-1")

    rev.write_text("tok-old\ntok-1\n")
    os.utime(rev, ns=(1, 1))  # a different mtime whatever the filesystem's granularity
    assert v.verify(hs(claims(jti="tok-1")), now=NOW)  # re-checked at most once per second
    clock.t += 1.5
    assert reason_of(v, hs(claims(jti="tok-1"))) == "revoked"
    assert v.is_revoked("tok-1")
    # '# tok-1' is a comment, not a revocation
    rev.write_text("# tok-1\n")
    os.utime(rev, ns=(2, 2))
    clock.t += 1.5
    assert not v.is_revoked("tok-1")


def test_revocation_requires_jti(tmp_path: Path) -> None:
    (tmp_path / "rev").write_text("")
    v = verifier(tmp_path, revocation_file="rev")
    assert reason_of(v, hs(claims(jti=_DROP))) == "missing_claim"


def test_missing_revocation_file_is_empty_and_warned_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    rl = RevocationList(tmp_path / "nope", clock=clock)
    with caplog.at_level(logging.WARNING, logger="sentinel_gw.policy"):
        for _ in range(3):
            assert not rl.is_revoked("x")
            clock.t += 2
    assert sum("does not exist" in r.message for r in caplog.records) == 1
    (tmp_path / "nope").write_text("x\n")
    clock.t += 2
    assert rl.is_revoked("x")


# ---------------------------------------------------------------------------------------------
# setup errors (never fail open)


def test_secret_missing_is_setup_error_never_admin() -> None:
    with pytest.raises(AuthSetupError, match="SENTINEL_JWT_SECRET") as ei:
        verifier(environ={})
    assert "admin identity" in str(ei.value)  # says it will not fall back
    with pytest.raises(AuthSetupError, match="MY_SECRET"):
        verifier(environ={"MY_SECRET": ""}, secret_env="MY_SECRET")
    with pytest.raises(AuthSetupError):
        anonymous_identity(AuthConfig())  # jwt mode: no anonymous identity either


def test_short_secret_is_setup_error() -> None:
    with pytest.raises(AuthSetupError, match="at least 32 bytes") as ei:
        verifier(environ={"SENTINEL_JWT_SECRET": "tooshort-secret"})
    assert "tooshort-secret" not in str(ei.value)
    # RFC 7518: the key must be as long as the hash output
    with pytest.raises(AuthSetupError, match="at least 64 bytes"):
        verifier(environ={"SENTINEL_JWT_SECRET": "x" * 40}, algorithms=("HS512",))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"algorithms": ()}, "at least one"),
        ({"algorithms": ("none",)}, "never accepted"),
        ({"algorithms": ("HS1024",)}, "unknown algorithm"),
        ({"algorithms": ("RS256",)}, "key source"),
        ({"algorithms": ("RS256",), "public_key_file": "missing.pem"}, "cannot read"),
        ({"public_key_file": "x.pem"}, "asymmetric"),
        ({"mode": "none"}, "not 'jwt'"),
        ({"leeway_secs": -1.0}, "leeway"),
        ({"algorithms": ("RS256",), "jwks_url": "http://example.com/jwks"}, "loopback"),
        ({"algorithms": ("RS256",), "jwks_url": "ftp://example.com/jwks"}, "https"),
    ],
)
def test_setup_errors(tmp_path: Path, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(AuthSetupError, match=match):
        verifier(tmp_path, **kw)


def test_key_file_problems(tmp_path: Path, rsa_key: Any, ec_key: Any) -> None:
    (tmp_path / "priv.pem").write_bytes(priv_pem(rsa_key))
    with pytest.raises(AuthSetupError, match="private key"):
        verifier(tmp_path, algorithms=("RS256",), public_key_file="priv.pem")
    write_pub(tmp_path, ec_key, "ec.pem")
    with pytest.raises(AuthSetupError, match="cannot verify"):
        verifier(tmp_path, algorithms=("RS256",), public_key_file="ec.pem")
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(AuthSetupError, match="not a usable PEM"):
        verifier(tmp_path, algorithms=("RS256",), public_key_file="junk.pem")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    write_pub(tmp_path, small, "small.pem")
    with pytest.raises(AuthSetupError, match="2048"):
        verifier(tmp_path, algorithms=("RS256",), public_key_file="small.pem")


def test_missing_cryptography_message(tmp_path: Path, rsa_key: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    write_pub(tmp_path, rsa_key)
    monkeypatch.setattr(auth_mod, "_crypto_available", lambda: False)
    with pytest.raises(AuthSetupError, match=r"sentinel-gw\[crypto\]"):
        verifier(tmp_path, algorithms=("RS256",), public_key_file="pub.pem")


def test_anonymous_identity() -> None:
    ident = anonymous_identity(AuthConfig(mode="none", anonymous_subject="local", anonymous_roles=("dev",)))
    assert (ident.subject, ident.roles, ident.expires_at) == ("local", ("dev",), None)
    assert not ident.expired(1e12)
    assert anonymous_identity(AuthConfig(mode="none")).roles == ()


# ---------------------------------------------------------------------------------------------
# JWKS


def test_jwks_file_kid_selection(tmp_path: Path, rsa_key: Any, rsa_key2: Any, ec_key: Any) -> None:
    jwks = {
        "keys": [
            jwk_of(rsa_key, "a"),
            jwk_of(rsa_key2, "b", alg="RS256"),
            jwk_of(ec_key, "e"),
            {"kty": "oct", "kid": "sym", "k": b64(SECRET.encode())},  # never loaded
            {"kty": "RSA", "kid": "broken"},
        ]
    }
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    v = verifier(tmp_path, algorithms=("RS256", "ES256"), jwks_file="jwks.json")

    def sign(key: Any, kid: str | None, alg: str = "RS256") -> str:
        return jwt.encode(claims(), priv_pem(key), algorithm=alg, headers={"kid": kid} if kid else None)

    assert v.verify(sign(rsa_key, "a"), now=NOW).subject == SUBJECT
    assert v.verify(sign(rsa_key2, "b"), now=NOW).subject == SUBJECT
    assert v.verify(sign(ec_key, "e", "ES256"), now=NOW).subject == SUBJECT
    assert reason_of(v, sign(rsa_key2, "a")) == "bad_signature"  # kid picks the key, not the signer
    assert reason_of(v, sign(rsa_key, "zzz")) == "unknown_key"
    assert reason_of(v, sign(rsa_key, None)) == "unknown_key"  # several RSA keys: no guessing
    assert reason_of(v, sign(ec_key, "a", "ES256")) == "unknown_key"  # RSA kid with an EC alg
    sym = craft({"alg": "HS256", "kid": "sym"}, claims(), SECRET.encode())
    assert reason_of(v, sym) == "bad_algorithm"


def test_jwks_file_without_usable_keys(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{"kty": "oct", "k": "AAAA"}]}))
    with pytest.raises(AuthSetupError, match="no usable keys"):
        verifier(tmp_path, algorithms=("RS256",), jwks_file="jwks.json")


def test_jwks_url_refetch_on_unknown_kid_rate_limited(rsa_key: Any, rsa_key2: Any) -> None:
    clock = FakeClock()
    served: dict[str, Any] = {"keys": [jwk_of(rsa_key, "k1")]}
    fetches: list[str] = []

    def fetch(url: str, timeout: float, max_bytes: int) -> bytes:
        fetches.append(url)
        assert timeout == 5.0 and max_bytes == 1024 * 1024
        return json.dumps(served).encode()

    v = TokenVerifier.from_config(
        AuthConfig(algorithms=("RS256",), jwks_url="https://issuer.example/jwks"),
        environ={}, base_dir=".", clock=clock, jwks_fetch=fetch,
    )  # fmt: skip
    assert v.jwks is not None and v.jwks.stale and not fetches  # no I/O at construction
    assert v.jwks.refresh()
    t1 = jwt.encode(claims(), priv_pem(rsa_key), algorithm="RS256", headers={"kid": "k1"})
    assert v.verify(t1, now=NOW).subject == SUBJECT

    served["keys"].append(jwk_of(rsa_key2, "k2"))  # key rotation at the issuer
    t2 = jwt.encode(claims(), priv_pem(rsa_key2), algorithm="RS256", headers={"kid": "k2"})
    assert reason_of(v, t2) == "unknown_key"  # verify() itself never fetches
    clock.t += 10
    with pytest.raises(AuthError):  # within 30 s of the last fetch: no refetch
        v.verify_fetching(t2, now=NOW)
    assert len(fetches) == 1
    clock.t += 30
    assert v.verify_fetching(t2, now=NOW).subject == SUBJECT
    assert len(fetches) == 2
    forged = jwt.encode(claims(), priv_pem(rsa_key), algorithm="RS256", headers={"kid": "random"})
    for _ in range(5):  # forged kids cannot make it hammer the issuer
        with pytest.raises(AuthError):
            v.verify_fetching(forged, now=NOW)
    assert len(fetches) == 2


def test_jwks_refresh_failure_keeps_keys(rsa_key: Any) -> None:
    state = {"fail": False}

    def fetch(url: str, timeout: float, max_bytes: int) -> bytes:
        if state["fail"]:
            raise OSError("connection refused")
        return json.dumps({"keys": [jwk_of(rsa_key, "k1")]}).encode()

    cache = JwksCache("https://issuer.example/jwks", frozenset({"RS256"}), fetch=fetch)
    assert cache.refresh()
    state["fail"] = True
    assert not cache.refresh()
    assert cache.get("k1")


@pytest.fixture
def jwks_server(rsa_key: Any) -> Iterator[Callable[[bytes], str]]:
    body = {"data": b""}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body["data"])))
            self.end_headers()
            self.wfile.write(body["data"])

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def serve(data: bytes) -> str:
        body["data"] = data
        return f"http://127.0.0.1:{server.server_address[1]}/jwks"

    yield serve
    server.shutdown()
    server.server_close()


def test_jwks_url_real_fetch_over_loopback(jwks_server: Callable[[bytes], str], rsa_key: Any) -> None:
    url = jwks_server(json.dumps({"keys": [jwk_of(rsa_key, "k1")]}).encode())
    cache = JwksCache(url, frozenset({"RS256"}))
    assert cache.refresh() and cache.get("k1")
    big = JwksCache(jwks_server(b" " * (1024 * 1024 + 10)), frozenset({"RS256"}))
    assert not big.refresh()  # over the 1 MiB cap


# ---------------------------------------------------------------------------------------------
# messages never leak


def test_error_messages_never_contain_token_secret_or_claims(tmp_path: Path) -> None:
    v = verifier(max_token_lifetime_secs=60)
    tokens = [
        hs(claims(exp=int(NOW) - 100)),
        hs(claims(iss="evil-issuer-value")),
        hs(claims(aud="evil-audience-value")),
        hs(claims(roles=[])),
        hs(claims(), secret="another-secret-that-is-long-enough-xyz-" + "z" * 30),
        hs(claims(exp=int(NOW) + 10_000)),
        craft({"alg": "none"}, claims(), None),
        craft({"alg": "HS999-evil-alg-value"}, claims(), SECRET.encode()),
        "x" * (MAX_TOKEN_BYTES + 1),
    ]
    for token in tokens:
        with pytest.raises(AuthError) as ei:
            v.verify(token, now=NOW)
        text = f"{ei.value} {ei.value!r} {ei.value.args}"
        assert token not in text
        assert SECRET not in text
        for value in (SUBJECT, "evil-issuer-value", "evil-audience-value", "HS999-evil-alg-value", "tok-1"):
            assert value not in text, (ei.value.reason, text)
    assert SECRET not in repr(v)


# ---------------------------------------------------------------------------------------------
# durations


@pytest.mark.parametrize(
    ("text", "secs"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("8h", 28800), ("2d", 172800), ("1w", 604800),
     ("1h30m", 5400), (" 1.5h ", 5400), ("1h 30m", 5400)],
)  # fmt: skip
def test_parse_duration(text: str, secs: float) -> None:
    assert parse_duration(text) == secs


@pytest.mark.parametrize("text", ["", "0", "0s", "-5", "5x", "h", "inf", "nan", "1e3", "8H", "5 m x"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_custom_tenant_and_roles_claims_roundtrip() -> None:
    v = verifier(tenant_claim="org", roles_claim="groups")
    token = mint_token(
        SECRET, subject="bob", roles=["ops"], ttl_secs=60, issuer="sentinel-gw", audience="sentinel-gw",
        tenant="acme", tenant_claim="org", roles_claim="groups", now=NOW,
    )  # fmt: skip
    ident = v.verify(token, now=NOW)
    assert (ident.roles, ident.tenant) == (("ops",), "acme")
