"""openpi's remote-inference wire format: msgpack over websockets, numpy arrays as tagged maps.

The protocol (openpi docs/remote_inference.md and its openpi-client package):

    connect      the server sends one binary frame: msgpack(metadata dict)
    request      binary frame: msgpack(observation dict)
    reply        binary frame: msgpack({"actions": float [H, action_dim], "server_timing":
                 {"infer_ms": ..., "prev_total_ms": ...}, ...})
    error        a text frame (a str, not bytes) with the message; openpi clients raise it.
                 openpi's server then closes the connection; this one keeps it open for a bad
                 request (the client's fault) and closes only on its own failures.
    auth         optional header "Authorization: Api-Key <token>" (openpi's api_key)

Arrays travel as msgpack maps with binary keys (never pickle):

    np.ndarray  {b"__ndarray__": True, b"data": raw bytes (C order), b"dtype": dtype.str
                 ("<f4", "|u1", ...), b"shape": [dims]}
    np.generic  {b"__npgeneric__": True, b"data": the Python value, b"dtype": dtype.str}

Object ("O"), void ("V") and complex ("c") dtypes are refused both ways: only plain numeric,
boolean and string arrays cross the wire, and decoding never runs code.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

REFUSED_DTYPE_KINDS = ("O", "V", "c")


class ProtocolError(ValueError):
    """A message that is not valid msgpack-numpy; the message says what was wrong."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in REFUSED_DTYPE_KINDS:
        raise ProtocolError(f"cannot send a {obj.dtype} array; expected a numeric, bool or string dtype")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(order="C"), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode {type(obj).__name__} in a message; expected dict, list, str, bytes, "
                    f"numbers, None or numpy arrays")


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        shape = obj.get(b"shape")
        data = obj.get(b"data")
        if not isinstance(shape, (list, tuple)) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ProtocolError(f"array shape is {shape!r}; expected a list of sizes >= 0")
        if not isinstance(data, bytes) or len(data) != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise ProtocolError(f"array of shape {list(shape)} and dtype {dtype.str} has "
                                f"{len(data) if isinstance(data, bytes) else type(data).__name__} data bytes; "
                                f"expected {dtype.itemsize * int(np.prod(shape, dtype=np.int64))}")
        return np.frombuffer(data, dtype=dtype).reshape(tuple(shape))
    if b"__npgeneric__" in obj:
        return _dtype(obj.get(b"dtype")).type(obj.get(b"data"))
    return obj


def _dtype(raw: Any) -> np.dtype:
    try:
        dtype = np.dtype(raw.decode() if isinstance(raw, bytes) else raw)
    except (TypeError, ValueError) as error:
        raise ProtocolError(f"array dtype is {raw!r}; expected a numpy dtype string such as '<f4'") from error
    if dtype.kind in REFUSED_DTYPE_KINDS or raw is None:
        raise ProtocolError(f"array dtype is {dtype}; expected a numeric, bool or string dtype")
    return dtype


def pack(obj: Any) -> bytes:
    """A message (dicts, lists, scalars, numpy arrays) -> msgpack bytes."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpack(data: bytes) -> Any:
    """msgpack bytes -> the message, numpy arrays restored (read-only views of `data`).
    Raises ProtocolError for anything that is not valid msgpack-numpy."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"message is a {type(data).__name__} frame; expected a binary msgpack frame")
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False)
    except ProtocolError:
        raise
    except Exception as error:  # msgpack's own errors: truncated data, bad map keys, ...
        raise ProtocolError(f"message is not valid msgpack ({type(error).__name__}: {error})") from error
