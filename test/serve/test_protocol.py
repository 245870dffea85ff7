"""openpi's msgpack-numpy format: every dtype an observation uses round-trips exactly; object,
void and complex arrays and malformed array maps are refused by name; no pickle anywhere."""

import msgpack
import numpy as np
import pytest

from ki_vla_ros.serve.protocol import ProtocolError, pack, unpack


@pytest.mark.parametrize("value", [
    np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),  # image
    np.array([0.1, -2.5, np.nan, np.inf], dtype=np.float32),  # state / actions
    np.array([0.1, -2.5, 1e300], dtype=np.float64),
    np.array([[1, -2]], dtype=np.int64), np.array([3], dtype=np.int32), np.array([1, 2], dtype=np.int16),
    np.array([True, False]), np.array(1.5), np.array(["a", "bc"]), np.zeros((0, 8), np.float32),
    np.float32(0.25), np.int64(7), np.bool_(True),
])
def test_every_observation_dtype_round_trips_exactly(value):
    message = {"observation/state": value, "prompt": "pick", "nested": [value, None]}
    decoded = unpack(pack(message))
    for got in (decoded["observation/state"], decoded["nested"][0]):
        assert type(got) is type(value) or isinstance(got, np.ndarray)
        assert got.dtype == value.dtype and np.shape(got) == np.shape(value)
        np.testing.assert_array_equal(got, value)
    assert decoded["prompt"] == "pick" and decoded["nested"][1] is None


def test_arrays_travel_as_openpis_tagged_maps():
    raw = msgpack.unpackb(pack(np.array([1.0, 2.0], np.float32)), raw=False)
    assert raw == {b"__ndarray__": True, b"data": np.array([1.0, 2.0], np.float32).tobytes(), b"dtype": "<f4",
                   b"shape": [2]}


def test_object_void_and_complex_arrays_are_refused_both_ways():
    for bad in (np.array([{"a": 1}], dtype=object), np.zeros(2, dtype=np.complex64), np.zeros(2, dtype="V4")):
        with pytest.raises(ProtocolError, match="cannot send a"):
            pack(bad)
    forged = msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]})
    with pytest.raises(ProtocolError, match="array dtype is object"):
        unpack(forged)


def test_malformed_messages_are_protocol_errors_naming_the_problem():
    short = msgpack.packb({b"__ndarray__": True, b"data": b"\0" * 3, b"dtype": "<f4", b"shape": [2]})
    with pytest.raises(ProtocolError, match=r"shape \[2\] and dtype <f4 has 3 data bytes; expected 8"):
        unpack(short)
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        unpack(b"\xc1")
    with pytest.raises(ProtocolError, match="str frame; expected a binary msgpack frame"):
        unpack("hello")
