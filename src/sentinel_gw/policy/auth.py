"""JWT authentication: a bearer token -> :class:`Identity`, or a precise :class:`AuthError`.

Rules (each one fixes a flaw of the original gateway, ORIGINAL-SENTINEL.md sections 6 and 15):

* No fail-open: ``mode = "jwt"`` without a usable key is an :class:`AuthSetupError` at startup,
  never an admin identity. HMAC secrets must be at least 32 bytes.
* Algorithms come from ``auth.algorithms`` only. ``none`` is never accepted; the header ``alg``
  is checked against the allow-list *before* the signature, and pyjwt gets the same list.
* HS* signatures are checked here with the standard library (``hmac.compare_digest``), parsing
  the token exactly as pyjwt does (strict base64url, ``crit``, ``kid``): pyjwt imports the
  ``cryptography`` package whenever it is installed, which costs ~10 MiB and ~25 ms at start-up
  for nothing an HMAC needs. pyjwt (imported on first use) verifies asymmetric signatures and
  mints tokens; tests/unit/test_auth_hmac.py checks both give the same verdict on every token.
  HMAC and asymmetric algorithms cannot be mixed in one config, and every key is bound to its
  family (an RSA public key is never an HMAC secret, an ``oct`` JWK is never loaded).
* Key-bearing headers (``jku``, ``jwk``, ``x5u``, ``x5c``) are ignored: keys come from config.
* Claims are validated here against an injectable ``now`` (pyjwt only checks the signature):
  ``exp`` and ``sub`` required; ``nbf`` and ``iat`` must not be in the future beyond the leeway;
  ``iss``/``aud`` when configured (``aud`` may be a string or an array); ``jti`` against the
  revocation list.
* Lifetime limit (``max_token_lifetime_secs`` > 0): both ``exp - iat`` (when ``iat`` is present)
  and the *remaining* lifetime ``exp - now`` (minus leeway) must be within the limit. Checking the
  remaining lifetime means a token without ``iat``, or with a back-dated ``iat``, cannot outlive
  the limit either.
* With a revocation file configured, tokens must carry a ``jti``: a token without one could never
  be revoked.
* Error messages never contain the token, the secret or claim values; ``reason`` is a stable code.

Key sources: the HMAC secret from ``environ[auth.secret_env]`` (raw UTF-8 bytes, like the
original), a PEM public key (or certificate) file, a JWKS file, and a JWKS URL cached by
:class:`JwksCache`. :meth:`TokenVerifier.verify` never does network I/O; when a token names an
unknown ``kid`` and the JWKS URL may be refetched, use :meth:`TokenVerifier.verify_fetching` in
a thread (``await asyncio.to_thread(verifier.verify_fetching, token)``), or call
``verifier.jwks.refresh()`` in a thread and verify again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import secrets as _secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from sentinel_gw.config_schema import AuthConfig
from sentinel_gw.policy.identity import Identity

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "MAX_TOKEN_BYTES",
    "MIN_SECRET_BYTES",
    "AuthError",
    "AuthSetupError",
    "JwksCache",
    "RevocationList",
    "TokenVerifier",
    "anonymous_identity",
    "mint_token",
    "parse_duration",
]

log = logging.getLogger("sentinel_gw.policy")

HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
MAX_TOKEN_BYTES: Final = 16 * 1024
MIN_SECRET_BYTES: Final = 32
# RFC 7518 section 3.2: an HMAC key must be at least as long as the hash output.
_HMAC_MIN_BYTES: Final = {"HS256": 32, "HS384": 48, "HS512": 64}
MIN_RSA_BITS: Final = 2048
JWKS_MAX_BYTES: Final = 1024 * 1024
JWKS_TIMEOUT_SECS: Final = 5.0
JWKS_MIN_REFETCH_SECS: Final = 30.0
JWKS_MAX_AGE_SECS: Final = 3600.0
_MAX_CLAIM_DEPTH: Final = 32
_MAX_EPOCH: Final = 2**53  # beyond this a float loses integer precision; no real token gets here

_EC_CURVES: Final = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_CURVE_NAMES: Final = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_CRYPTO_HINT: Final = "install sentinel-gw[crypto] (pip install 'sentinel-gw[crypto]')"

# pyjwt verifies the signature only; claims are checked below against an injectable clock.
_DECODE_OPTIONS: Final[dict[str, Any]] = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}


class AuthError(Exception):
    """A token was refused. ``reason`` is a stable machine code; ``str()`` is for humans and
    never contains the token, a secret or claim values."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"AuthError({self.reason!r}, {self.message!r})"


class AuthSetupError(Exception):
    """Authentication cannot be configured as written (raised at startup or reload)."""


# ---------------------------------------------------------------------------------------------
# Small helpers


def parse_duration(text: str) -> float:
    """``"8h"``, ``"30m"``, ``"90s"``, ``"2d"``, ``"1w"``, ``"1h30m"`` or plain seconds -> seconds."""
    s = text.strip() if isinstance(text, str) else ""
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        value = float(s)
    else:
        units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])\s*", s)
        if not s or not re.fullmatch(r"(?:\d+(?:\.\d+)?\s*[smhdw]\s*)+", s):
            raise ValueError(f"invalid duration {text!r}: use e.g. 90s, 30m, 8h, 2d, 1h30m or plain seconds")
        value = sum(float(n) * units[u] for n, u in parts)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return value


def _crypto_available() -> bool:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return False
    from jwt.algorithms import has_crypto

    return bool(has_crypto)


def _looks_like_key_material(data: bytes) -> bool:
    head = data.lstrip()
    return head.startswith((b"-----BEGIN", b"ssh-", b"ecdsa-sha2-")) or (
        head.startswith(b"{") and b'"kty"' in head
    )


def _resolve(base_dir: str, path: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))


def _read_limited(path: str, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise AuthSetupError(f"{what}: cannot read {path}: {e.strerror or e}") from None
    if len(data) > limit:
        raise AuthSetupError(f"{what}: {path} is larger than {limit} bytes")
    return data


def anonymous_identity(auth: AuthConfig) -> Identity:
    """The identity used when ``auth.mode = "none"``: configured subject and roles, no expiry."""
    if auth.mode != "none":
        # Handing out an unauthenticated identity in jwt mode would be the original's fail-open bug.
        raise AuthSetupError("anonymous identity requested but auth.mode is not 'none'")
    return Identity(subject=auth.anonymous_subject, roles=tuple(auth.anonymous_roles), expires_at=None)


# ---------------------------------------------------------------------------------------------
# Public keys


@dataclass(frozen=True, slots=True)
class _PublicKey:
    key: Any  # a cryptography public key object
    kty: str  # "RSA" | "EC" | "OKP"
    crv: str | None
    alg: str | None  # pinned by a JWK's "alg"
    kid: str | None

    def fits(self, alg: str) -> bool:
        if self.alg is not None and self.alg != alg:
            return False
        if alg.startswith(("RS", "PS")):
            return self.kty == "RSA"
        if alg.startswith("ES"):
            return self.kty == "EC" and self.crv == _EC_CURVES.get(alg)
        if alg == "EdDSA":
            return self.kty == "OKP"
        return False


def _describe_key(key: Any) -> tuple[str, str | None]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key is {key.key_size} bits; at least {MIN_RSA_BITS} required")
        return "RSA", None
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC", _CURVE_NAMES.get(key.curve.name, key.curve.name)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "OKP", "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "OKP", "Ed448"
    raise ValueError(f"unsupported public key type {type(key).__name__}")


def _load_pem(data: bytes, origin: str) -> _PublicKey:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if b"PRIVATE KEY-----" in data:
        raise AuthSetupError(f"{origin}: contains a private key; the gateway needs only the public key")
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
        kty, crv = _describe_key(key)
    except (ValueError, TypeError) as e:
        raise AuthSetupError(f"{origin}: not a usable PEM public key or certificate ({e})") from None
    return _PublicKey(key=key, kty=kty, crv=crv, alg=None, kid=None)


def _load_jwk(jwk: object, allowed: frozenset[str]) -> _PublicKey | None:
    """One JWK -> key, or None (with a log line) if it is unusable for the allowed algorithms."""
    import jwt
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    if not isinstance(jwk, dict):
        return None
    kid = jwk.get("kid")
    label = f"kid {kid!r}" if isinstance(kid, str) else "key without kid"
    kty = jwk.get("kty")
    if kid is not None and not isinstance(kid, str):
        log.warning("JWKS: skipping a key whose kid is not a string")
        return None
    if kty == "oct":
        log.warning("JWKS: skipping %s: symmetric (oct) keys are never accepted from a JWKS", label)
        return None
    if "d" in jwk or "p" in jwk:
        log.warning("JWKS: skipping %s: it contains private key material", label)
        return None
    if jwk.get("use", "sig") != "sig":
        return None
    alg = jwk.get("alg")
    if alg is not None and alg not in allowed:
        log.debug("JWKS: skipping %s: its alg is not in auth.algorithms", label)
        return None
    loader: Any = {"RSA": RSAAlgorithm, "EC": ECAlgorithm, "OKP": OKPAlgorithm}.get(kty)  # type: ignore[arg-type]
    if loader is None:
        log.warning("JWKS: skipping %s: unsupported kty", label)
        return None
    try:
        key = loader.from_jwk(jwk)
        got_kty, crv = _describe_key(key)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as e:
        log.warning("JWKS: skipping %s: %s", label, e)
        return None
    pk = _PublicKey(key=key, kty=got_kty, crv=crv, alg=alg if isinstance(alg, str) else None, kid=kid)
    if not any(pk.fits(a) for a in allowed):
        log.debug("JWKS: skipping %s: no configured algorithm fits it", label)
        return None
    return pk


def _parse_jwks(data: bytes, allowed: frozenset[str], origin: str) -> tuple[_PublicKey, ...]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise ValueError(f"{origin}: not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError(f"{origin}: a JWKS must be an object with a 'keys' array")
    keys = tuple(k for k in (_load_jwk(j, allowed) for j in doc["keys"]) if k is not None)
    if not keys:
        raise ValueError(f"{origin}: no usable keys for algorithms {', '.join(sorted(allowed))}")
    return keys


def _index(keys: Sequence[_PublicKey]) -> Mapping[str, tuple[_PublicKey, ...]]:
    out: dict[str, list[_PublicKey]] = {}
    for k in keys:
        if k.kid is not None:
            out.setdefault(k.kid, []).append(k)
    return MappingProxyType({kid: tuple(v) for kid, v in out.items()})


# ---------------------------------------------------------------------------------------------
# JWKS URL


def check_jwks_url(url: str) -> str:
    """https anywhere; plain http only to a loopback host (a local test issuer)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and host:
        if host == "localhost":
            return url
        try:
            if ipaddress.ip_address(host).is_loopback:
                return url
        except ValueError:
            pass
        raise AuthSetupError("auth.jwks_url: plain http is only allowed for loopback hosts; use https")
    raise AuthSetupError("auth.jwks_url: must be an https:// URL")


def _default_fetch(url: str, timeout: float, max_bytes: int) -> bytes:
    import urllib.request  # only with a JWKS URL: http.client and email cost start-up time

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        # A redirect could lead from https to http or to another host; keys come from the URL given.
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(_NoRedirect())
    req = urllib.request.Request(  # noqa: S310 - scheme checked by check_jwks_url
        url, headers={"Accept": "application/jwk-set+json, application/json", "User-Agent": "sentinel-gw"}
    )
    # The socket timeout bounds each read; the deadline also stops a server that drips bytes.
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    with opener.open(req, timeout=timeout) as resp:
        while True:
            chunk: bytes = resp.read(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise ValueError(f"response larger than {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise TimeoutError(f"JWKS download took longer than {timeout:g} s")
            chunks.append(chunk)
    return b"".join(chunks)


class JwksCache:
    """Keys from a JWKS URL, cached by ``kid``.

    ``refresh()`` blocks (socket timeout 5 s, body capped at 1 MiB): run it in a thread. A failed
    refresh keeps the previous keys. Refetching because of an unknown ``kid`` is allowed at most
    once per 30 s (:meth:`refetch_allowed`) so forged kids cannot make the gateway hammer the
    issuer; :attr:`stale` says when a routine refresh is due.
    """

    def __init__(
        self,
        url: str,
        algorithms: frozenset[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        fetch: Callable[[str, float, int], bytes] | None = None,
        timeout: float = JWKS_TIMEOUT_SECS,
        max_bytes: int = JWKS_MAX_BYTES,
        min_refetch_secs: float = JWKS_MIN_REFETCH_SECS,
        max_age_secs: float = JWKS_MAX_AGE_SECS,
    ) -> None:
        self.url = check_jwks_url(url)
        self._algorithms = algorithms
        self._clock = clock
        self._fetch = fetch or _default_fetch
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._min_refetch = min_refetch_secs
        self._max_age = max_age_secs
        self._lock = threading.Lock()
        self._keys: tuple[_PublicKey, ...] = ()
        self._by_kid: Mapping[str, tuple[_PublicKey, ...]] = MappingProxyType({})
        self._last_attempt: float | None = None
        self._last_success: float | None = None

    @property
    def keys(self) -> tuple[_PublicKey, ...]:
        return self._keys

    def get(self, kid: str) -> tuple[_PublicKey, ...]:
        return self._by_kid.get(kid, ())

    @property
    def stale(self) -> bool:
        return self._last_success is None or self._clock() - self._last_success >= self._max_age

    def refetch_allowed(self) -> bool:
        return self._last_attempt is None or self._clock() - self._last_attempt >= self._min_refetch

    def refresh(self) -> bool:
        """Fetch the JWKS now; True if new keys were installed."""
        import http.client  # loaded with urllib.request by the default fetch; JWKS URL only

        with self._lock:
            self._last_attempt = self._clock()
            try:
                data = self._fetch(self.url, self._timeout, self._max_bytes)
                keys = _parse_jwks(data, self._algorithms, "JWKS from auth.jwks_url")
            except (OSError, ValueError, http.client.HTTPException) as e:
                log.warning(
                    "JWKS refresh from %s failed: %s; keeping %d cached key(s)", self.url, e, len(self._keys)
                )
                return False
            self._keys = keys
            self._by_kid = _index(keys)
            self._last_success = self._clock()
            log.info("JWKS refreshed from %s: %d key(s)", self.url, len(keys))
            return True


# ---------------------------------------------------------------------------------------------
# Revocation


class RevocationList:
    """Revoked ``jti`` values from a file: one per line (the first whitespace-separated field;
    the rest of the line is free text), ``#`` starts a comment line.

    The file is stat'ed at most once per second and re-read when its inode, size or mtime
    change. A missing file means nothing is revoked (warned about once); an unreadable one keeps
    the last list.
    """

    def __init__(self, path: str | os.PathLike[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.path = os.fspath(path)
        self._clock = clock
        self._checked: float | None = None
        self._sig: tuple[int, int, int, int] | None = None
        self._revoked: frozenset[str] = frozenset()
        self._warned_missing = False
        self._warned_error = False

    @property
    def revoked(self) -> frozenset[str]:
        self._maybe_reload()
        return self._revoked

    def is_revoked(self, jti: str) -> bool:
        self._maybe_reload()
        return jti in self._revoked

    def _maybe_reload(self) -> None:
        now = self._clock()
        if self._checked is not None and now - self._checked < 1.0:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if not self._warned_missing:
                self._warned_missing = True
                log.warning("revocation file %s does not exist; no tokens are revoked", self.path)
            self._sig = None
            self._revoked = frozenset()
            return
        except OSError as e:
            self._warn_error(e)
            return
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if sig == self._sig:
            return
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            self._warn_error(e)
            return
        revoked: set[str] = set()
        for line in text.splitlines():
            fields = line.split(None, 1)
            if fields and not fields[0].startswith("#"):
                revoked.add(fields[0])
        self._sig = sig
        self._revoked = frozenset(revoked)
        self._warned_missing = self._warned_error = False
        log.info("revocation file %s: %d revoked token id(s)", self.path, len(revoked))

    def _warn_error(self, e: OSError) -> None:
        if not self._warned_error:
            self._warned_error = True
            log.warning(
                "revocation file %s unreadable (%s); keeping the last list", self.path, e.strerror or e
            )


# ---------------------------------------------------------------------------------------------
# Verification


def _freeze(value: Any, depth: int = 0) -> Any:
    if depth > _MAX_CLAIM_DEPTH:
        raise AuthError("malformed", "token claims are nested too deeply")
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v, depth + 1) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v, depth + 1) for v in value)
    return value


def _number(payload: Mapping[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuthError("invalid_claim", f"claim '{name}' must be a number (seconds since the epoch)")
    if isinstance(value, int):
        if abs(value) > _MAX_EPOCH:
            raise AuthError("invalid_claim", f"claim '{name}' is out of range")
        return float(value)
    if not math.isfinite(value) or abs(value) > _MAX_EPOCH:
        raise AuthError("invalid_claim", f"claim '{name}' is out of range")
    return value


def _has_control_chars(s: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in s)


_HMAC_HASHES: Final = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
_BASE64URL: Final = re.compile(rb"[A-Za-z0-9_-]*")
_SUPPORTED_CRIT: Final = frozenset({"b64"})


def _b64url_segment(segment: bytes) -> bytes:
    """One JWS segment, decoded as strictly as pyjwt does: the base64url alphabet only, at most
    two trailing "=" and only to a multiple of 4, and the canonical encoding of its bytes (no
    stray low bits). Raises ValueError."""
    stripped = segment.rstrip(b"=")
    padding = len(segment) - len(stripped)
    if padding > 2 or (padding and len(segment) % 4) or len(stripped) % 4 == 1:
        raise ValueError("bad base64url padding")
    if _BASE64URL.fullmatch(stripped) is None:
        raise ValueError("not base64url")
    try:
        decoded = base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
    except binascii.Error:
        raise ValueError("not base64url") from None
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped:
        raise ValueError("non-canonical base64url")
    return decoded


def _parse_jws(token: str) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    """A compact JWS -> (header, signing input, payload bytes, signature), checked like pyjwt's
    decoder (header a JSON object, ``kid`` a string, ``crit`` a non-empty list of understood and
    present extensions). Nothing is verified. Raises ValueError."""
    raw = token.encode("ascii")
    signing_input, _, signature_segment = raw.rpartition(b".")
    header_segment, dot, payload_segment = signing_input.partition(b".")
    if not dot:
        raise ValueError("not enough segments")
    header = json.loads(_b64url_segment(header_segment))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    if header.get("b64", True) is False:
        payload = b""  # never decoded (refused by the caller): no work for an attacker
        if payload_segment:
            raise ValueError("payload must be empty when b64 is false")
    else:
        payload = _b64url_segment(payload_segment)
    signature = _b64url_segment(signature_segment)
    if "kid" in header and not isinstance(header["kid"], str):
        raise ValueError("kid is not a string")
    if "crit" in header:
        crit = header["crit"]
        if not isinstance(crit, list) or not crit:
            raise ValueError("crit is not a non-empty list")
        for ext in crit:
            if not isinstance(ext, str) or ext not in _SUPPORTED_CRIT or ext not in header:
                raise ValueError("unsupported critical extension")
    return header, signing_input, payload, signature


def _verify_asymmetric(token: str, key: Any, alg: str) -> Any:
    """pyjwt checks an RS*/PS*/ES*/EdDSA signature (only these configs import it and
    cryptography); the claims are checked by the caller."""
    import jwt

    try:
        return jwt.decode(token, key=key, algorithms=[alg], options=_DECODE_OPTIONS)  # type: ignore[arg-type]
    except jwt.InvalidSignatureError:
        raise AuthError("bad_signature", "token signature is invalid") from None
    except jwt.InvalidAlgorithmError:
        raise AuthError("bad_algorithm", "token algorithm is not accepted") from None
    except jwt.InvalidKeyError:
        raise AuthError("unknown_key", "no usable key for this token") from None
    except (jwt.PyJWTError, ValueError, TypeError, OverflowError, RecursionError):
        raise AuthError("malformed", "token could not be decoded") from None


class TokenVerifier:
    """Verifies bearer JWTs for one config snapshot. Build with :meth:`from_config`."""

    def __init__(
        self,
        *,
        algorithms: tuple[str, ...],
        hmac_key: bytes | None = None,
        public_keys: tuple[_PublicKey, ...] = (),
        jwks_keys: tuple[_PublicKey, ...] = (),
        jwks: JwksCache | None = None,
        issuer: str = "",
        audience: str = "",
        leeway_secs: float = 30.0,
        max_token_lifetime_secs: float = 0.0,
        roles_claim: str = "roles",
        tenant_claim: str = "tenant",
        revocation: RevocationList | None = None,
    ) -> None:
        self.algorithms = algorithms
        self._allowed = frozenset(algorithms)
        self._hmac_key = hmac_key
        self._public_keys = public_keys
        self._jwks_keys = jwks_keys
        self._jwks_by_kid = _index(jwks_keys)
        self.jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_secs
        self._max_lifetime = max_token_lifetime_secs
        self._roles_claim = roles_claim
        self._tenant_claim = tenant_claim
        self.revocation = revocation

    def __repr__(self) -> str:
        # Never show key material.
        return (
            f"TokenVerifier(algorithms={self.algorithms!r}, issuer={self._issuer!r}, "
            f"audience={self._audience!r})"
        )

    @classmethod
    def from_config(
        cls,
        auth: AuthConfig,
        *,
        environ: Mapping[str, str],
        base_dir: str,
        clock: Callable[[], float] = time.monotonic,
        jwks_fetch: Callable[[str, float, int], bytes] | None = None,
    ) -> TokenVerifier:
        """Validate the auth config and load keys; raises :class:`AuthSetupError`.

        Does no network I/O: with ``jwks_url``, call ``verifier.jwks.refresh()`` (in a thread)
        before serving.
        """
        if auth.mode != "jwt":
            raise AuthSetupError("auth.mode is not 'jwt': no token verifier (use anonymous_identity)")
        algorithms = tuple(dict.fromkeys(auth.algorithms))
        if not algorithms:
            raise AuthSetupError("auth.algorithms: at least one algorithm is required")
        supported = ", ".join(sorted(HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS))
        for a in algorithms:
            if not isinstance(a, str) or a.lower() == "none":
                raise AuthSetupError("auth.algorithms: 'none' (unsigned tokens) is never accepted")
            if a not in HMAC_ALGORITHMS and a not in ASYMMETRIC_ALGORITHMS:
                raise AuthSetupError(f"auth.algorithms: unknown algorithm {a!r} (supported: {supported})")
        hs = [a for a in algorithms if a in HMAC_ALGORITHMS]
        asym = frozenset(a for a in algorithms if a in ASYMMETRIC_ALGORITHMS)
        if hs and asym:
            raise AuthSetupError(
                "auth.algorithms: HMAC (HS*) and asymmetric algorithms cannot be mixed "
                "(it would let one kind of key be tried as the other)"
            )
        if auth.leeway_secs < 0 or not math.isfinite(auth.leeway_secs):
            raise AuthSetupError("auth.leeway_secs: must be a finite number >= 0")
        if auth.max_token_lifetime_secs < 0 or not math.isfinite(auth.max_token_lifetime_secs):
            raise AuthSetupError("auth.max_token_lifetime_secs: must be a finite number >= 0")

        common: dict[str, Any] = {
            "algorithms": algorithms,
            "issuer": auth.issuer,
            "audience": auth.audience,
            "leeway_secs": float(auth.leeway_secs),
            "max_token_lifetime_secs": float(auth.max_token_lifetime_secs),
            "roles_claim": auth.roles_claim or "roles",
            "tenant_claim": auth.tenant_claim,
            "revocation": RevocationList(_resolve(base_dir, auth.revocation_file), clock=clock)
            if auth.revocation_file
            else None,
        }

        if hs:
            if auth.public_key_file or auth.jwks_file or auth.jwks_url:
                raise AuthSetupError(
                    "auth: public_key_file/jwks_file/jwks_url are for asymmetric algorithms, "
                    f"but auth.algorithms is {', '.join(algorithms)}"
                )
            name = auth.secret_env
            if not name:
                raise AuthSetupError(
                    "auth.secret_env: must name the environment variable holding the HMAC secret"
                )
            value = environ.get(name, "")
            if not value:
                raise AuthSetupError(
                    f"auth: mode is 'jwt' but the environment variable {name} (the HMAC secret) is not set "
                    "or empty. Set it to a random value of at least 32 bytes "
                    "(e.g. `openssl rand -base64 48`). "
                    "The gateway never falls back to an unauthenticated or admin identity."
                )
            key = value.encode("utf-8")
            need = max(_HMAC_MIN_BYTES[a] for a in hs)
            if len(key) < need:
                raise AuthSetupError(
                    f"auth: the HMAC secret in {name} is {len(key)} bytes; {', '.join(hs)} needs at least "
                    f"{need} bytes (e.g. `openssl rand -base64 {need + need // 2}`)"
                )
            if _looks_like_key_material(key):
                raise AuthSetupError(
                    f"auth: {name} holds a PEM/SSH/JWK key, not an HMAC secret; "
                    "for asymmetric keys set auth.algorithms and auth.public_key_file"
                )
            return cls(hmac_key=key, **common)

        if not _crypto_available():
            raise AuthSetupError(
                f"auth.algorithms {', '.join(algorithms)} need the 'cryptography' package: {_CRYPTO_HINT}"
            )
        if not (auth.public_key_file or auth.jwks_file or auth.jwks_url):
            raise AuthSetupError(
                f"auth: algorithms {', '.join(algorithms)} need a key source: "
                "set auth.public_key_file, auth.jwks_file or auth.jwks_url"
            )
        public_keys: tuple[_PublicKey, ...] = ()
        if auth.public_key_file:
            path = _resolve(base_dir, auth.public_key_file)
            pk = _load_pem(
                _read_limited(path, JWKS_MAX_BYTES, "auth.public_key_file"), f"auth.public_key_file {path}"
            )
            if not any(pk.fits(a) for a in asym):
                raise AuthSetupError(
                    f"auth.public_key_file {path}: a {pk.kty}{'/' + pk.crv if pk.crv else ''} key "
                    f"cannot verify any of {', '.join(algorithms)}"
                )
            public_keys = (pk,)
        jwks_keys: tuple[_PublicKey, ...] = ()
        if auth.jwks_file:
            path = _resolve(base_dir, auth.jwks_file)
            data = _read_limited(path, JWKS_MAX_BYTES, "auth.jwks_file")
            try:
                jwks_keys = _parse_jwks(data, asym, f"auth.jwks_file {path}")
            except ValueError as e:
                raise AuthSetupError(str(e)) from None
        cache = JwksCache(auth.jwks_url, asym, clock=clock, fetch=jwks_fetch) if auth.jwks_url else None
        return cls(public_keys=public_keys, jwks_keys=jwks_keys, jwks=cache, **common)

    # -- verification ------------------------------------------------------------------------

    def is_revoked(self, jti: str) -> bool:
        """For the per-request re-check of an identity verified earlier in the session."""
        return self.revocation is not None and self.revocation.is_revoked(jti)

    def verify_fetching(self, token: str, *, now: float | None = None) -> Identity:
        """Like :meth:`verify`, but on an unknown ``kid`` refetches the JWKS URL (rate-limited)
        and retries once. Blocks: run it in a thread."""
        try:
            return self.verify(token, now=now)
        except AuthError as e:
            if e.reason != "unknown_key" or self.jwks is None or not self.jwks.refetch_allowed():
                raise
        self.jwks.refresh()
        return self.verify(token, now=now)

    def verify(self, token: str, *, now: float | None = None) -> Identity:
        """Verify signature and claims; raises :class:`AuthError`. No network I/O."""
        if now is None:
            now = time.time()
        if not isinstance(token, str) or not token:
            raise AuthError("missing_token", "no token presented")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("too_large", f"token longer than {MAX_TOKEN_BYTES} bytes")
        if not token.isascii() or token.count(".") != 2:
            raise AuthError("malformed", "token is not a compact JWS (header.payload.signature)")
        try:
            header, signing_input, payload_bytes, signature = _parse_jws(token)
        except (ValueError, RecursionError):
            raise AuthError("malformed", "token header is not valid base64url-encoded JSON") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise AuthError("bad_algorithm", "token header has no algorithm")
        if alg.lower() == "none":
            raise AuthError("bad_algorithm", "unsigned tokens (alg none) are never accepted")
        if alg not in self._allowed:
            named = f"{alg} " if alg in HMAC_ALGORITHMS or alg in ASYMMETRIC_ALGORITHMS else ""
            raise AuthError(
                "bad_algorithm",
                f"token algorithm {named}is not accepted (auth.algorithms: {', '.join(self.algorithms)})",
            )
        if header.get("b64", True) is not True:
            raise AuthError("malformed", "detached or unencoded payloads are not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed", "token header kid must be a string")

        key = self._select_key(alg, kid)
        if alg in HMAC_ALGORITHMS:
            expected = hmac.new(key, signing_input, _HMAC_HASHES[alg]).digest()
            if not hmac.compare_digest(signature, expected):
                raise AuthError("bad_signature", "token signature is invalid")
            try:
                payload = json.loads(payload_bytes)
            except (ValueError, RecursionError):
                raise AuthError("malformed", "token could not be decoded") from None
        else:
            payload = _verify_asymmetric(token, key, alg)
        if not isinstance(payload, dict):
            raise AuthError("malformed", "token payload is not a JSON object")
        return self._identity(payload, now)

    def _select_key(self, alg: str, kid: str | None) -> Any:
        if alg in HMAC_ALGORITHMS:
            if self._hmac_key is None:
                raise AuthError("bad_algorithm", "token algorithm is not accepted")
            return self._hmac_key
        candidates: tuple[_PublicKey, ...]
        if kid is not None:
            candidates = self._jwks_by_kid.get(kid, ())
            if not candidates and self.jwks is not None:
                candidates = self.jwks.get(kid)
            if not candidates and not self._jwks_keys and self.jwks is None:
                # Only a PEM key is configured: issuers often set a kid anyway.
                candidates = self._public_keys
        else:
            candidates = self._public_keys
            if not candidates:
                pool = self._jwks_keys + (self.jwks.keys if self.jwks is not None else ())
                fitting = tuple(k for k in pool if k.fits(alg))
                # Without a kid, guessing among several keys would be ambiguous.
                candidates = fitting if len(fitting) == 1 else ()
        for k in candidates:
            if k.fits(alg):
                return k.key
        if candidates:
            raise AuthError("unknown_key", "the key for this token does not fit its algorithm")
        raise AuthError("unknown_key", "no configured key matches the token's key id")

    def _identity(self, payload: dict[str, Any], now: float) -> Identity:
        leeway = self._leeway
        exp = _number(payload, "exp")
        if exp is None:
            raise AuthError("missing_claim", "token has no 'exp' claim")
        if now >= exp + leeway:
            raise AuthError("expired", "token has expired")
        nbf = _number(payload, "nbf")
        if nbf is not None and nbf > now + leeway:
            raise AuthError("not_yet_valid", "token is not valid yet (nbf)")
        iat = _number(payload, "iat")
        if iat is not None and iat > now + leeway:
            raise AuthError("issued_in_future", "token was issued in the future (iat)")

        iss = payload.get("iss")
        if iss is not None and not isinstance(iss, str):
            raise AuthError("wrong_issuer", "claim 'iss' must be a string")
        if self._issuer:
            if iss is None:
                raise AuthError("missing_claim", "token has no 'iss' claim")
            if iss != self._issuer:
                raise AuthError("wrong_issuer", "token issuer does not match auth.issuer")
        if self._audience:
            aud = payload.get("aud")
            if aud is None:
                raise AuthError("missing_claim", "token has no 'aud' claim")
            auds = [aud] if isinstance(aud, str) else aud
            if not isinstance(auds, list) or not all(isinstance(a, str) for a in auds):
                raise AuthError("wrong_audience", "claim 'aud' must be a string or an array of strings")
            if self._audience not in auds:
                raise AuthError("wrong_audience", "token audience does not include auth.audience")

        sub = payload.get("sub")
        if sub is None:
            raise AuthError("missing_claim", "token has no 'sub' claim")
        if not isinstance(sub, str) or not sub.strip():
            raise AuthError("missing_claim", "claim 'sub' must be a non-empty string")
        if _has_control_chars(sub) or len(sub) > 1024:
            raise AuthError("invalid_claim", "claim 'sub' contains control characters or is too long")

        if self._max_lifetime > 0:
            if iat is not None and exp - iat > self._max_lifetime:
                raise AuthError(
                    "too_long_lived", f"token lifetime exceeds {self._max_lifetime:g} s (exp - iat)"
                )
            if exp - now > self._max_lifetime + leeway:
                raise AuthError(
                    "too_long_lived", f"token remaining lifetime exceeds {self._max_lifetime:g} s"
                )

        jti = payload.get("jti")
        if jti is not None and (not isinstance(jti, str) or not jti):
            raise AuthError("invalid_claim", "claim 'jti' must be a non-empty string")
        if self.revocation is not None:
            if jti is None:
                raise AuthError(
                    "missing_claim", "token has no 'jti' claim (required when a revocation file is set)"
                )
            if self.revocation.is_revoked(jti):
                raise AuthError("revoked", "token has been revoked")

        roles = self._roles(payload)
        tenant: str | None = None
        if self._tenant_claim and self._tenant_claim in payload:
            raw = payload[self._tenant_claim]
            if raw is not None and not isinstance(raw, str):
                raise AuthError("invalid_claim", f"claim '{self._tenant_claim}' must be a string")
            tenant = raw or None

        return Identity(
            subject=sub,
            roles=roles,
            tenant=tenant,
            issuer=iss,
            token_id=jti,
            expires_at=exp,
            claims=_freeze(payload),
        )

    def _roles(self, payload: Mapping[str, Any]) -> tuple[str, ...]:
        claim = self._roles_claim
        if claim in payload:
            raw = payload[claim]
        elif "role" in payload:  # the original gateway's single-role claim
            claim, raw = "role", payload["role"]
        else:
            raise AuthError("no_roles", f"token has no '{self._roles_claim}' claim")
        if isinstance(raw, str):
            items: list[Any] = [raw]
        elif isinstance(raw, list):
            items = raw
        else:
            raise AuthError("invalid_claim", f"claim '{claim}' must be a string or an array of strings")
        if not all(isinstance(r, str) for r in items):
            raise AuthError("invalid_claim", f"claim '{claim}' must contain only strings")
        roles = tuple(dict.fromkeys(r for r in items if r))
        if not roles:
            raise AuthError("no_roles", f"claim '{claim}' names no role")
        return roles


# ---------------------------------------------------------------------------------------------
# Minting


def mint_token(
    secret: str | bytes,
    *,
    subject: str,
    roles: Sequence[str],
    ttl_secs: float,
    issuer: str,
    audience: str,
    algorithm: str = "HS256",
    tenant: str | None = None,
    roles_claim: str = "roles",
    jti: str | None = None,
    now: float | None = None,
    tenant_claim: str = "tenant",
) -> str:
    """Sign a token. ``secret`` is the HMAC secret for HS*, a PEM private key otherwise."""
    if algorithm not in HMAC_ALGORITHMS and algorithm not in ASYMMETRIC_ALGORITHMS:
        raise ValueError(f"unsupported algorithm {algorithm!r}")
    if not subject:
        raise ValueError("subject must not be empty")
    if isinstance(roles, str):
        roles = [roles]
    role_list = [r for r in roles if r]
    if not role_list:
        raise ValueError("at least one role is required")
    if not math.isfinite(ttl_secs) or ttl_secs <= 0:
        raise ValueError("ttl_secs must be > 0")
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if algorithm in HMAC_ALGORITHMS:
        need = _HMAC_MIN_BYTES[algorithm]
        if len(key) < need:
            raise ValueError(f"{algorithm} needs an HMAC secret of at least {need} bytes")
    elif not _crypto_available():
        raise ValueError(f"{algorithm} needs the 'cryptography' package: {_CRYPTO_HINT}")
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {
        "sub": subject,
        roles_claim: role_list,
        "iat": issued,
        "nbf": issued,
        "exp": math.ceil(issued + ttl_secs),
        "jti": jti if jti is not None else _secrets.token_hex(16),
    }
    if issuer:
        payload["iss"] = issuer
    if audience:
        payload["aud"] = audience
    if tenant is not None:
        payload[tenant_claim] = tenant
    import jwt

    try:
        return jwt.encode(payload, key, algorithm=algorithm)
    except (jwt.PyJWTError, ValueError, TypeError) as e:
        raise ValueError(f"cannot sign with {algorithm}: {type(e).__name__}") from None
