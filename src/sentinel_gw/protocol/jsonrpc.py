"""JSON-RPC 2.0 as MCP uses it: parsing, validation, encoding. Sans-I/O.

Messages stay plain dicts (what `json.loads` gives): the gateway forwards most fields untouched,
so a typed model would only cost time and lose fields a backend added (the original's bug).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from sentinel_gw.protocol.jsonenc import json_encoder

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# Gateway codes kept from the original for compatibility (see docs/ERRORS.md).
UNAUTHENTICATED = -32001
RESOURCE_NOT_FOUND = -32002  # MCP's meaning in handshake-era revisions; never reused for anything else
PERMISSION_DENIED = -32003
RATE_LIMITED = -32004
KILLED = -32005
BACKEND_UNAVAILABLE = -32006
CIRCUIT_OPEN = -32007
REQUEST_TIMEOUT = -32008

JsonId = str | int

# Built once (json.JSONEncoder.encode builds its C encoder anew on every message): the pure path.
_encode = json_encoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_decode = json.JSONDecoder().decode

# Optional orjson (see sentinel_gw.accel), confined to what it does exactly like the stdlib:
# - encoding: orjson raises for what it cannot represent as the stdlib would (integers beyond 64
#   bits, non-string keys, lone surrogates, subclasses of str/int/dict/list, nesting beyond 254),
#   and then the stdlib encodes that message. Non-finite floats become null, as on the stdlib's
#   tolerant path. Output differs only in float spelling (1e-05 vs 0.00001) and in escaping
#   nothing more than needed, never in meaning.
# - decoding: small messages only (ordinary requests and replies), and only without a run of 19
#   digits (orjson turns integers beyond 64 bits into floats, the stdlib keeps them exact). Short
#   lines cannot nest deeper than the stdlib parses. Anything orjson rejects (NaN, Infinity, lone
#   surrogates, invalid UTF-8) goes to the stdlib, which accepts it or words the error as before.
#   Bigger messages are left to the stdlib: the guards would cost more than orjson saves there.
FAST_DECODE_MAX = 512
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0000000000")
_LONG_NUMBER = b"0" * 19
_fast_dumps: Any = None
_fast_loads: Any = None
_fast_option = 0
_fast_errors: tuple[type[Exception], ...] = ()


def use_orjson(module: Any) -> None:
    """Encode/decode with `module` (orjson) where it is exact, or with the stdlib only (None)."""
    global _fast_dumps, _fast_loads, _fast_option, _fast_errors
    if module is None:
        _fast_dumps = _fast_loads = None
        _fast_errors = ()
        return
    _fast_dumps, _fast_loads = module.dumps, module.loads
    _fast_option = (
        module.OPT_APPEND_NEWLINE
        | module.OPT_PASSTHROUGH_SUBCLASS
        | module.OPT_PASSTHROUGH_DATACLASS
        | module.OPT_PASSTHROUGH_DATETIME
    )
    _fast_errors = (module.JSONEncodeError, module.JSONDecodeError)


def json_backend() -> str:
    """ "orjson" or "stdlib": what encode/decode use first."""
    return "stdlib" if _fast_dumps is None else "orjson"


def _init_accel() -> None:
    from sentinel_gw import accel

    use_orjson(accel.orjson())


_init_accel()


class JsonRpcError(Exception):
    """An error that becomes a JSON-RPC error response."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_error(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


@dataclass(slots=True)
class Invalid:
    """A message that could not be accepted; answer with `error` (id may be None)."""

    id: JsonId | None
    error: JsonRpcError


_tolerant = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=True)


def encode(message: Any) -> bytes:
    """Compact one-line JSON plus the newline that frames it on stdio.

    What a peer sent us may not re-encode strictly (NaN from Python servers, a lone surrogate
    from a string cut mid-emoji): those fall back to ASCII escapes with non-finite numbers as
    null, so a reply is never lost to encoding.
    """
    if _fast_dumps is not None:
        try:
            return _fast_dumps(message, option=_fast_option)  # type: ignore[no-any-return]
        except _fast_errors:
            pass  # not representable by orjson exactly as by the stdlib: the stdlib decides
    try:
        return (_encode(message) + "\n").encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return (_tolerant.encode(_finite(message)) + "\n").encode("ascii")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def decode(data: bytes | str) -> Any:
    """Parse one message; raises JsonRpcError(PARSE_ERROR) with a short reason."""
    if (
        _fast_loads is not None
        and type(data) is bytes
        and len(data) <= FAST_DECODE_MAX
        and _LONG_NUMBER not in data.translate(_DIGITS_AS_ZERO)
    ):
        try:
            return _fast_loads(data)
        except _fast_errors:
            pass  # the stdlib accepts it (NaN, lone surrogates) or explains the error
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return _decode(text)
    except UnicodeDecodeError:
        raise JsonRpcError(PARSE_ERROR, "Parse error: message is not valid UTF-8") from None
    except RecursionError:
        raise JsonRpcError(PARSE_ERROR, "Parse error: nesting too deep") from None
    except ValueError as exc:
        reason = str(exc).split(":", 1)[0]
        raise JsonRpcError(PARSE_ERROR, f"Parse error: {reason}") from None


def valid_id(value: Any) -> bool:
    # bool is an int subclass; JSON true/false is never a valid id.
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def readable_id(message: Any) -> JsonId | None:
    """The id to put on an error reply when the message itself was invalid."""
    if isinstance(message, dict):
        value = message.get("id")
        if valid_id(value):
            return value
    return None


def check_message(message: Any) -> Invalid | None:
    """Validate the envelope of one decoded message. None means it is well formed.

    Kinds are told apart by shape: `method` + `id` is a request, `method` alone a notification,
    `id` + exactly one of `result`/`error` a response.
    """
    if not isinstance(message, dict):
        return Invalid(None, JsonRpcError(INVALID_REQUEST, "Invalid Request: expected a JSON object"))
    if message.get("jsonrpc") != "2.0":
        return Invalid(
            readable_id(message), JsonRpcError(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"')
        )
    if "method" in message:
        method = message["method"]
        if not isinstance(method, str) or not method:
            return Invalid(
                readable_id(message),
                JsonRpcError(INVALID_REQUEST, 'Invalid Request: "method" must be a non-empty string'),
            )
        if "id" in message and not valid_id(message["id"]):
            return Invalid(
                None, JsonRpcError(INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer')
            )
        params = message.get("params")
        if params is not None and not isinstance(params, dict):
            return Invalid(
                readable_id(message),
                JsonRpcError(INVALID_REQUEST, 'Invalid Request: "params" must be an object'),
            )
        return None
    if "id" in message and (("result" in message) != ("error" in message)):
        if "error" in message:
            err = message["error"]
            if not isinstance(err, dict) or not isinstance(err.get("code"), int):
                return Invalid(None, JsonRpcError(INVALID_REQUEST, "Invalid Request: malformed error object"))
        if message["id"] is not None and not valid_id(message["id"]):
            return Invalid(None, JsonRpcError(INVALID_REQUEST, 'Invalid Request: "id" is not valid'))
        return None
    return Invalid(
        readable_id(message),
        JsonRpcError(INVALID_REQUEST, "Invalid Request: neither a request nor a response"),
    )


def is_request(message: dict[str, Any]) -> bool:
    return "method" in message and "id" in message


def is_notification(message: dict[str, Any]) -> bool:
    return "method" in message and "id" not in message


def is_response(message: dict[str, Any]) -> bool:
    return "method" not in message


def settle(future: Any, message: dict[str, Any]) -> None:
    """Complete a waiter with a response: its result (an object), or its error as JsonRpcError."""
    if "error" in message:
        err = message["error"]
        future.set_exception(
            JsonRpcError(err.get("code", INTERNAL_ERROR), str(err.get("message", "")), err.get("data"))
        )
    else:
        res = message.get("result")
        future.set_result(res if isinstance(res, dict) else {})


def result(id_: JsonId, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "result": value}


def error(id_: JsonId | None, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": id_, "error": err}


def error_from(id_: JsonId | None, exc: JsonRpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "error": exc.to_error()}


def request(id_: JsonId, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


def notification(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    return msg
