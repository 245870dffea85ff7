"""Reading and writing rosbag2 bags (MCAP and sqlite3) with the pure-Python `rosbags`.

There is no rosbag2_py here (DESIGN.md section 4), and rclpy's serialize_message pads some
types, so bags are read and written with `rosbags` and its CDR codec:

    bag = Bag.open("episode_01")          # a bag directory, or a bare .mcap / .db3 file
    bag.require_topics({"/joint_states": JOINT_STATE})
    for m in bag.messages(["/joint_states"]):
        m.topic, m.stamp_s, m.receive_time_s, m.msg   # msg: a decoded rosbags dataclass

Messages come in receive-time order (the bag's own timestamps). `stamp_s` is the header
stamp when the message has one that is set, else the receive time: the synchronizer and
the targets work in stamp time, as the live node does.

Types: the ROS 2 Kilted message set of rosbags (sensor_msgs, trajectory_msgs, nav_msgs,
geometry_msgs, rosgraph_msgs, ...) plus this package's msg/*.msg, plus any definition a
bag carries itself (MCAP stores them). Every problem -- a missing or truncated file, a
topic that is not there, a type nobody can decode, a message that does not decode --
raises `BagError` naming the bag, the topic and what was expected.

`BagWriter` writes bags for the recorder (raw CDR bytes exactly as received) and for tests
(message objects built with the `make_*` helpers below, serialized by rosbags).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from rosbags.rosbag2 import Reader, StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

PACKAGE_MSG_DIR = Path(__file__).resolve().parents[2] / "msg"
PACKAGE_NAME = "ki_vla_ros"

# Message types by their rosbag2 names.
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
JOINT_STATE = "sensor_msgs/msg/JointState"
JOINT_TRAJECTORY = "trajectory_msgs/msg/JointTrajectory"
TWIST = "geometry_msgs/msg/Twist"
TWIST_STAMPED = "geometry_msgs/msg/TwistStamped"
ODOMETRY = "nav_msgs/msg/Odometry"
STRING = "std_msgs/msg/String"
CLOCK = "rosgraph_msgs/msg/Clock"
ACTION_CHUNK = "ki_vla_ros/msg/ActionChunk"
SUBTASK = "ki_vla_ros/msg/Subtask"

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
ROSBAG2_VERSION = 9  # the metadata version rosbag2 writes since Jazzy


class BagError(Exception):
    """A bag cannot be used as asked; the message names the bag, the topic and the problem."""

    def __init__(self, bag: str | Path, problem: str, topic: str | None = None):
        self.bag = str(bag)
        self.topic = topic
        self.problem = problem
        where = f"{self.bag}: topic '{topic}'" if topic else self.bag
        super().__init__(f"{where}: {problem}")


# ----------------------------------------------------------------------------- types


def package_message_types() -> dict[str, Any]:
    """This package's msg/*.msg as rosbags type definitions ('ki_vla_ros/msg/ActionChunk': ...)."""
    types: dict[str, Any] = {}
    for path in sorted(PACKAGE_MSG_DIR.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{PACKAGE_NAME}/msg/{path.stem}"))
    return types


def make_typestore() -> Typestore:
    """ROS 2 Kilted types + ki_vla_ros messages. A new store each call: bags may add types."""
    store = get_typestore(Stores.ROS2_KILTED)
    store.register(package_message_types())
    return store


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    receive_time_s: float  # when the recorder received it (the bag's timestamp)
    stamp_s: float  # header.stamp when set, else receive_time_s
    msg: Any  # decoded rosbags message (dataclass with the ROS field names)


def header_stamp_s(msg: Any) -> float | None:
    """header.stamp in seconds, or None when the message has no header or the stamp is 0."""
    header = getattr(msg, "header", None)
    stamp = getattr(header, "stamp", None)
    if stamp is None or (stamp.sec == 0 and stamp.nanosec == 0):
        return None
    return stamp.sec + stamp.nanosec * 1e-9


class Bag:
    """An open rosbag2 bag (directory with metadata.yaml, or a bare .mcap / .db3 file)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(self.path, "no such file or directory; expected a rosbag2 directory "
                                      "(with metadata.yaml) or a .mcap / .db3 file")
        self.typestore = make_typestore()
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as exc:  # the storage libraries (mcap, sqlite/apsw, zstd) raise their own types
            raise BagError(self.path, f"cannot be opened as a rosbag2 bag ({type(exc).__name__}: "
                                      f"{exc}); the file may be truncated or corrupt") from exc
        self._connections = list(self._reader.connections)
        self._register_bag_types()

    @classmethod
    def open(cls, path: str | Path) -> "Bag":
        return cls(path)

    def __enter__(self) -> "Bag":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._reader.is_open:
            self._reader.close()

    # -- what is in the bag -------------------------------------------------------------

    @property
    def topics(self) -> dict[str, str]:
        """topic -> message type (rosbag2 name, e.g. 'sensor_msgs/msg/Image')."""
        return {c.topic: c.msgtype for c in self._connections}

    def message_count(self, topics: Iterable[str] | None = None) -> int:
        wanted = None if topics is None else set(topics)
        return sum(c.msgcount for c in self._connections if wanted is None or c.topic in wanted)

    def topic_count(self, topic: str) -> int:
        return self.message_count([topic])

    @property
    def start_time_s(self) -> float:
        return self._reader.start_time * 1e-9

    @property
    def end_time_s(self) -> float:
        return self._reader.end_time * 1e-9

    def is_decodable(self, msgtype: str) -> bool:
        return msgtype in self.typestore.fielddefs

    def require_topics(self, expected: Mapping[str, str | Sequence[str]]) -> None:
        """Each topic must be in the bag with one of the expected types, and decodable."""
        present = self.topics
        for topic, types in expected.items():
            allowed = (types,) if isinstance(types, str) else tuple(types)
            if topic not in present:
                raise BagError(self.path, f"not in the bag; expected {' or '.join(allowed)}. "
                                          f"Topics in the bag: {sorted(present)}", topic)
            if present[topic] not in allowed:
                raise BagError(self.path, f"has type {present[topic]}; expected "
                                          f"{' or '.join(allowed)}", topic)
            self._require_decodable(topic, present[topic])

    def _require_decodable(self, topic: str, msgtype: str) -> None:
        if not self.is_decodable(msgtype):
            raise BagError(self.path, f"message type '{msgtype}' is unknown: not a ROS 2 Kilted "
                                      f"type, not a {PACKAGE_NAME} message, and the bag carries no "
                                      "definition for it", topic)

    def _register_bag_types(self) -> None:
        """Types the bag defines itself (MCAP stores .msg text) become decodable too."""
        for connection in self._connections:
            msgdef = connection.msgdef
            if connection.msgtype in self.typestore.fielddefs or not msgdef.data:
                continue
            if getattr(msgdef.format, "name", "") != "MSG":
                continue
            try:
                self.typestore.register(get_types_from_msg(msgdef.data, connection.msgtype))
            except Exception:  # an unparsable embedded definition: the type stays unknown
                pass

    # -- messages -----------------------------------------------------------------------

    def raw_messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, bytes]]:
        """(topic, msgtype, receive_time_ns, CDR bytes) in receive-time order."""
        wanted = None if topics is None else set(topics)
        connections = [c for c in self._connections if wanted is None or c.topic in wanted]
        if not connections:
            return
        topic = None
        try:
            for connection, time_ns, data in self._reader.messages(connections=connections):
                topic = connection.topic
                yield connection.topic, connection.msgtype, time_ns, data
        except Exception as exc:  # see __init__: storage libraries raise their own error types
            raise BagError(self.path, f"reading stopped after topic '{topic}' "
                                      f"({type(exc).__name__}: {exc}); the file is truncated or "
                                      "corrupt") from exc

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        """Decoded messages in receive-time order."""
        wanted = None if topics is None else list(topics)
        for topic in wanted or self.topics:
            if topic in self.topics:
                self._require_decodable(topic, self.topics[topic])
        count: dict[str, int] = {}
        for topic, msgtype, time_ns, data in self.raw_messages(wanted):
            index = count.get(topic, 0)
            count[topic] = index + 1
            try:
                msg = self.typestore.deserialize_cdr(data, msgtype)
            except Exception as exc:  # rosbags raises assorted errors on short or bad CDR
                raise BagError(self.path, f"message #{index} at {time_ns * 1e-9:.6f} s "
                                          f"({len(data)} bytes) does not decode as {msgtype} "
                                          f"({type(exc).__name__}: {exc})", topic) from exc
            receive_s = time_ns * 1e-9
            stamp = header_stamp_s(msg)
            yield BagMessage(topic, msgtype, receive_s, receive_s if stamp is None else stamp, msg)


# ----------------------------------------------------------------------------- writing


class BagWriter:
    """Writes a rosbag2 bag directory (MCAP by default) with rosbags.

    writer = BagWriter(out_dir, storage="mcap")
    writer.add_topic("/joint_states", JOINT_STATE)
    writer.write_raw("/joint_states", receive_time_ns, cdr_bytes)   # recorder: exact bytes
    writer.write("/joint_states", receive_time_ns, msg)             # tests: a message object
    writer.close()
    """

    def __init__(self, path: str | Path, storage: str = "mcap"):
        if storage not in STORAGES:
            raise ValueError(f"storage is {storage!r}; expected one of {sorted(STORAGES)}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(self.path, "already exists; expected a new bag path (rosbag2 never "
                                      "overwrites a bag)")
        self.storage = storage
        self.typestore = make_typestore()
        self._writer = Writer(self.path, version=ROSBAG2_VERSION, storage_plugin=STORAGES[storage])
        try:
            self._writer.open()
        except (WriterError, OSError) as exc:
            raise BagError(self.path, f"cannot be created ({exc})") from exc
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.closed = False

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has_topic(self, topic: str) -> bool:
        return topic in self._connections

    def add_topic(self, topic: str, msgtype: str) -> None:
        if topic in self._connections:
            return
        if msgtype not in self.typestore.fielddefs:
            raise BagError(self.path, f"message type '{msgtype}' is unknown to the typestore "
                                      "(ROS 2 Kilted + ki_vla_ros); cannot record it", topic)
        self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
        self.counts[topic] = 0

    def write_raw(self, topic: str, receive_time_ns: int, data: bytes) -> None:
        self._writer.write(self._connections[topic], int(receive_time_ns), bytes(data))
        self.counts[topic] += 1

    def write(self, topic: str, receive_time_ns: int, msg: Any) -> None:
        data = self.typestore.serialize_cdr(msg, self._connections[topic].msgtype)
        self.write_raw(topic, receive_time_ns, bytes(data))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._writer.close()


# ----------------------------------------------------------------------------- message builders
# rosbags message objects for writing synthetic bags; field names are the ROS ones.


def ros_time(store: Typestore, time_s: float) -> Any:
    ns = int(round(time_s * 1e9))
    return store.types["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def ros_duration(store: Typestore, duration_s: float) -> Any:
    ns = int(round(duration_s * 1e9))
    return store.types["builtin_interfaces/msg/Duration"](sec=ns // 1_000_000_000,
                                                          nanosec=ns % 1_000_000_000)


def make_header(store: Typestore, stamp_s: float, frame_id: str = "") -> Any:
    return store.types["std_msgs/msg/Header"](stamp=ros_time(store, stamp_s), frame_id=frame_id)


def make_joint_state(store: Typestore, stamp_s: float, names: Sequence[str],
                     positions: Sequence[float], velocities: Sequence[float] = ()) -> Any:
    return store.types[JOINT_STATE](
        header=make_header(store, stamp_s), name=list(names),
        position=np.ascontiguousarray(positions, dtype=np.float64),
        velocity=np.ascontiguousarray(velocities, dtype=np.float64), effort=np.zeros(0, np.float64))


def make_image(store: Typestore, stamp_s: float, rgb: np.ndarray, frame_id: str = "camera") -> Any:
    """RGB uint8 [H, W, 3] -> sensor_msgs/Image rgb8."""
    height, width = rgb.shape[:2]
    return store.types[IMAGE](header=make_header(store, stamp_s, frame_id), height=height, width=width,
                              encoding="rgb8", is_bigendian=0, step=width * 3,
                              data=np.ascontiguousarray(rgb, dtype=np.uint8).reshape(-1))


def make_compressed_image(store: Typestore, stamp_s: float, rgb: np.ndarray,
                          frame_id: str = "camera", format: str = "png") -> Any:
    """RGB uint8 [H, W, 3] -> sensor_msgs/CompressedImage (PNG by default: lossless)."""
    import cv2

    ok, encoded = cv2.imencode(f".{format}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {format}")
    return store.types[COMPRESSED_IMAGE](header=make_header(store, stamp_s, frame_id), format=format,
                                         data=encoded.reshape(-1))


def make_joint_trajectory(store: Typestore, start_time_s: float, joint_names: Sequence[str],
                          positions: np.ndarray, step_duration_s: float) -> Any:
    """positions [K, J] at start_time_s + k * step_duration_s (header.stamp = start_time_s)."""
    point_type = store.types["trajectory_msgs/msg/JointTrajectoryPoint"]
    empty = np.zeros(0, np.float64)
    points = [point_type(positions=np.ascontiguousarray(row, dtype=np.float64), velocities=empty,
                         accelerations=empty, effort=empty,
                         time_from_start=ros_duration(store, k * step_duration_s))
              for k, row in enumerate(np.atleast_2d(positions))]
    return store.types[JOINT_TRAJECTORY](header=make_header(store, start_time_s),
                                         joint_names=list(joint_names), points=points)


def make_twist(store: Typestore, vx: float = 0.0, vy: float = 0.0, wz: float = 0.0,
               stamp_s: float | None = None) -> Any:
    """A Twist, or with stamp_s a TwistStamped (frame base_link) stamped then."""
    vector = store.types["geometry_msgs/msg/Vector3"]
    twist = store.types[TWIST](linear=vector(x=vx, y=vy, z=0.0), angular=vector(x=0.0, y=0.0, z=wz))
    if stamp_s is None:
        return twist
    return store.types[TWIST_STAMPED](header=make_header(store, stamp_s, "base_link"), twist=twist)


def twist_command_type(group: Any) -> str:
    """The message type name of a base group's topics (TwistStamped unless twist_type is 'twist')."""
    return TWIST_STAMPED if group.stamped else TWIST


def make_odometry(store: Typestore, stamp_s: float, vx: float = 0.0, vy: float = 0.0,
                  wz: float = 0.0) -> Any:
    t = store.types
    pose = t["geometry_msgs/msg/PoseWithCovariance"](
        pose=t["geometry_msgs/msg/Pose"](position=t["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0),
                                         orientation=t["geometry_msgs/msg/Quaternion"](
                                             x=0.0, y=0.0, z=0.0, w=1.0)),
        covariance=np.zeros(36, np.float64))
    twist = t["geometry_msgs/msg/TwistWithCovariance"](twist=make_twist(store, vx, vy, wz),
                                                       covariance=np.zeros(36, np.float64))
    return t[ODOMETRY](header=make_header(store, stamp_s, "odom"), child_frame_id="base_link",
                       pose=pose, twist=twist)


def make_string(store: Typestore, text: str) -> Any:
    return store.types[STRING](data=text)


def duration_s(duration: Any) -> float:
    """builtin_interfaces Duration/Time -> float seconds."""
    return duration.sec + duration.nanosec * 1e-9
