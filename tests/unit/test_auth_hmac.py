"""HS* tokens are verified with the standard library (policy/auth.py `_parse_jws` + hmac); pyjwt
did it before. Differential tests: on every token below, valid, tampered, malformed or fuzzed, the
verifier must give the same verdict as the pyjwt-based verification it replaced."""

from __future__ import annotations

import base64
import json
import random
import sys
from typing import Any

import jwt
import pytest

from sentinel_gw.config_schema import AuthConfig
from sentinel_gw.policy.auth import _DECODE_OPTIONS, AuthError, TokenVerifier

SECRET = "s" * 64
OTHER = "o" * 64
NOW = 1_700_000_000
AUTH = AuthConfig(mode="jwt", secret_env="S")
CLAIMS = {
    "sub": "alice",
    "roles": ["dev"],
    "iat": NOW,
    "exp": NOW + 600,
    "iss": AUTH.issuer,
    "aud": AUTH.audience,
}
OPTIONS = _DECODE_OPTIONS  # what the pyjwt-based verification passed (signature only)


def make_verifier(algorithms: list[str]) -> TokenVerifier:
    return TokenVerifier.from_config(
        AuthConfig(mode="jwt", secret_env="S", algorithms=algorithms), environ={"S": SECRET}, base_dir="."
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(
    header: Any, payload: Any, key: str = SECRET, alg: str = "HS256", sig: str | None = None
) -> str:
    """A token from arbitrary header/payload bytes (or JSON values), signed over them."""
    import hashlib
    import hmac

    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64(h)}.{b64(p)}"
    if sig is None:
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}.get(
            alg, hashlib.sha256
        )
        sig = b64(hmac.new(key.encode(), signing_input.encode(), digest).digest())
    return f"{signing_input}.{sig}"


def reference(verifier: TokenVerifier, token: str) -> tuple[str, Any]:
    """The verification as it was, with pyjwt: header, our header rules, jwt.decode, claims."""
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        return "refused", "malformed"
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg or alg.lower() == "none" or alg not in verifier.algorithms:
        return "refused", "bad_algorithm"
    if header.get("b64", True) is not True:
        return "refused", "malformed"
    if header.get("kid") is not None and not isinstance(header.get("kid"), str):
        return "refused", "malformed"
    try:
        payload = jwt.decode(token, key=SECRET.encode(), algorithms=[alg], options=OPTIONS)  # type: ignore[arg-type]
    except jwt.InvalidSignatureError:
        return "refused", "bad_signature"
    except jwt.InvalidAlgorithmError:
        return "refused", "bad_algorithm"
    except (jwt.PyJWTError, ValueError, TypeError, OverflowError, RecursionError):
        return "refused", "malformed"
    return "signature ok", payload


def ours(verifier: TokenVerifier, token: str) -> tuple[str, Any]:
    """The verifier's verdict on the same question (claims are checked after the signature, so a
    token whose signature passes is reported with its payload whatever its claims say)."""
    seen: dict[str, Any] = {}
    original = verifier._identity

    def capture(payload: dict[str, Any], now: float) -> Any:
        seen["payload"] = payload
        return original(payload, now)

    verifier._identity = capture  # type: ignore[method-assign]
    try:
        verifier.verify(token, now=NOW)
    except AuthError as exc:
        if "payload" not in seen:
            return "refused", exc.reason
    finally:
        del verifier._identity  # back to the class's method
    return "signature ok", seen["payload"]


def same_verdict(verifier: TokenVerifier, token: str) -> None:
    assert ours(verifier, token) == reference(verifier, token), token[:200]


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_valid_tokens_from_pyjwt_verify(alg: str) -> None:
    v = make_verifier([alg])
    token = jwt.encode(CLAIMS, SECRET, algorithm=alg)
    assert v.verify(token, now=NOW).subject == "alice"
    same_verdict(v, token)
    same_verdict(v, jwt.encode(CLAIMS, SECRET, algorithm=alg, headers={"kid": "k1", "jku": "https://x"}))


HEADERS: list[Any] = [
    {"alg": "HS256", "typ": "JWT"},
    {"alg": "HS256", "kid": 7},
    {"alg": "HS256", "kid": None},
    {"alg": "HS256", "crit": ["b64"], "b64": True},
    {"alg": "HS256", "crit": ["b64"]},
    {"alg": "HS256", "crit": []},
    {"alg": "HS256", "crit": "b64", "b64": True},
    {"alg": "HS256", "crit": ["exp"], "exp": 1},
    {"alg": "HS256", "crit": [1]},
    {"alg": "HS256", "b64": False, "crit": ["b64"]},
    {"alg": "HS256", "b64": "yes"},
    {"alg": "HS384"},
    {"alg": "none"},
    {"alg": "NONE"},
    {"alg": "RS256"},
    {"alg": ""},
    {"alg": 256},
    {},
    ["alg", "HS256"],
    "HS256",
    b"not json",
    b'{"alg":"HS256",}',
    b'{"alg":"HS256","alg":"none"}',
    b'{"alg":"none","alg":"HS256"}',
    b"\xef\xbb\xbf" + b'{"alg":"HS256"}',
    '{"alg":"HS256"}'.encode("utf-16"),
    b"[" * 3000 + b"]" * 3000,  # deeper than the recursion limit, within MAX_TOKEN_BYTES
]

PAYLOADS: list[Any] = [
    CLAIMS,
    [1, 2],
    "text",
    None,
    b"not json",
    b'{"sub":"a","exp":NaN}',
    b'{"sub":"a","exp":' + b"9" * 5000 + b"}",
    b"[" * 3000 + b"]" * 3000,
    '{"sub":"alice"}'.encode("utf-32"),
    b"",
]


@pytest.mark.parametrize("header", HEADERS, ids=lambda h: repr(h)[:30])
def test_headers_same_verdict(header: Any) -> None:
    v = make_verifier(["HS256"])
    same_verdict(v, raw_token(header, CLAIMS))
    same_verdict(v, raw_token(header, CLAIMS, key=OTHER))


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: repr(p)[:30])
def test_payloads_same_verdict(payload: Any) -> None:
    v = make_verifier(["HS256"])
    same_verdict(v, raw_token({"alg": "HS256"}, payload))
    same_verdict(v, raw_token({"alg": "HS256"}, payload, key=OTHER))


def test_b64_false_with_empty_payload_is_refused_like_before() -> None:
    v = make_verifier(["HS256"])
    token = raw_token({"alg": "HS256", "b64": False, "crit": ["b64"]}, b"")
    assert ours(v, token) == reference(v, token) == ("refused", "malformed")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t + "=",
        lambda t: t + "==",
        lambda t: t + "===",
        lambda t: t.replace(".", "=.", 1),
        lambda t: t.replace(".", "==.", 1),
        lambda t: t[:-1] + ("B" if t[-1] == "A" else "A"),  # changes or sets unused low bits
        lambda t: t[:-1],
        lambda t: t + "A",
        lambda t: t.replace("-", "+").replace("_", "/"),
        lambda t: "." + t.split(".", 1)[1],
        lambda t: t.split(".", 1)[0] + "..",
        lambda t: t.replace(".", " .", 1),
        lambda t: t.replace(".", "\n.", 1),
        lambda t: t.replace(".", "!.", 1),
        lambda t: t.rsplit(".", 1)[0] + ".",
    ],
)
def test_segment_encodings_same_verdict(mutate: Any) -> None:
    v = make_verifier(["HS256"])
    for claims in (CLAIMS, {**CLAIMS, "x": "y"}, {**CLAIMS, "pad": "ab"}):
        token = jwt.encode(claims, SECRET, algorithm="HS256")
        mutated = mutate(token)
        if mutated.isascii() and mutated.count(".") == 2:  # else refused before any parsing, as before
            same_verdict(v, mutated)


def test_fuzzed_tokens_same_verdict() -> None:
    rng = random.Random(8)  # fixed: reproducible
    v = make_verifier(["HS256", "HS512"])
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/!. "
    seeds = [
        jwt.encode(CLAIMS, SECRET, algorithm="HS256"),
        jwt.encode(CLAIMS, SECRET, algorithm="HS512", headers={"kid": "a"}),
        raw_token({"alg": "HS256", "crit": ["b64"], "b64": True}, CLAIMS),
    ]
    accepted = refused = 0
    for i in range(3000):
        token = list(seeds[i % len(seeds)])
        for _ in range(rng.randint(1, 3)):
            token[rng.randrange(len(token))] = rng.choice(alphabet)
        text = "".join(token)
        if text.count(".") != 2:
            continue
        verdict = ours(v, text)
        assert verdict == reference(v, text), text[:200]
        accepted += verdict[0] == "signature ok"
        refused += verdict[0] == "refused"
    assert refused > 1000 and accepted > 0  # the mutations reach both outcomes


def test_hmac_verification_does_not_import_pyjwt_or_cryptography() -> None:
    import subprocess

    code = (
        "import sys\n"
        "from sentinel_gw.config_schema import AuthConfig\n"
        "from sentinel_gw.policy.auth import TokenVerifier\n"
        "v = TokenVerifier.from_config(\n"
        f"    AuthConfig(mode='jwt', secret_env='S'), environ={{'S': {SECRET!r}}}, base_dir='.'\n"
        ")\n"
        "token = sys.stdin.read().strip()\n"
        f"assert v.verify(token, now={NOW}).subject == 'alice'\n"
        "roots = ('jwt', 'cryptography', 'urllib', 'http')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in roots))\n"
    )
    token = jwt.encode(CLAIMS, SECRET, algorithm="HS256")
    out = subprocess.run(
        [sys.executable, "-c", code], input=token, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() in ("[]", "['urllib', 'urllib.parse']"), out.stdout
