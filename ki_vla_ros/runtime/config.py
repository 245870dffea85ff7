"""The embodiment config: one YAML file per robot, in the ROS 2 parameter-file layout.

The same file is handed to every node of the graph as a ROS parameter file (launch
`parameters=[config]`) and read whole by `ki-vla bringup CONFIG` and the replay
evaluator through `load_robot_config`. So it follows the rules of ROS parameter files:

    /**:                        # shared by every node: what the robot *is*
      ros__parameters:
        robot_name: single_arm
        control_rate_hz: 50.0
        joint_states_topic: /joint_states
        odom_topic: /odom        # optional; mobile bases only
        joints: [...]            # model order of the state and action vectors
        joint_limits: {<joint>: {lower, upper, max_velocity}}
        cameras: {<name>: {topic, message_type, slot, width?, height?}}
        action_groups: {<name>: {kind, controller_topic, policy_topic, teleop_topic,
                                 joints | dims + max_velocity + max_acceleration + twist_type?}}
    policy_node:
      ros__parameters: {chunk: {...}, sync: {...}, model: {...}, default_instruction}
    planner_node:
      ros__parameters: {enabled, rate_hz, hysteresis_count, max_new_tokens, max_subtask_chars?,
                        max_image_age_s?}
    command_mux:
      ros__parameters: {initial_mode, teleop_timeout_s, policy_timeout_s, max_step_rad,
                        ramp_step_duration_s?, joint_state_max_age_s?}

ROS parameters are typed, have no null and no lists of mappings; hence named mappings
instead of lists of records, optional keys that are simply left out, and floats that must
be written as floats (`50.0`: a node declaring a double rejects the integer 50). The
loader enforces the same rules so a file that loads here also loads in a ROS node.

Every mistake raises `ConfigError` naming the file, the key path, the value and what was
expected. Unknown keys are errors: a misspelt limit must not silently fall back to a default.
"""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

SHARED_BLOCK = "/**"
PARAMS_KEY = "ros__parameters"
BASE_TWIST_DIMS = ("vx", "vy", "wz")
PACKAGE_NAME = "ki_vla_ros"
SOURCE_CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


class ConfigError(ValueError):
    """The robot config is wrong; the message names file, key path, value and expectation."""

    def __init__(self, source: str, key_path: str, value: Any, expected: str):
        self.source = source
        self.key_path = key_path
        self.value = value
        self.expected = expected
        super().__init__(f"{source}: {key_path} = {_show(value)}: {expected}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _doc(text: str, range: tuple[float, float] | None = None, **kwargs: Any) -> Any:
    """A dataclass field whose description doubles as the ROS parameter description; range:
    the (inclusive) bounds its ROS parameter declares (the exact rules are in _check)."""
    return field(metadata={"description": text, "range": range}, **kwargs)


# ----------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class JointLimits:
    name: str
    lower: float = _doc("lowest commandable position (rad, or m for prismatic joints)")
    upper: float = _doc("highest commandable position (rad or m)")
    max_velocity: float = _doc("largest speed the policy may command (rad/s or m/s)")


@dataclass(frozen=True)
class CameraConfig:
    name: str
    topic: str = _doc("image topic")
    message_type: Literal["raw", "compressed"] = _doc(
        "sensor_msgs/Image ('raw') or sensor_msgs/CompressedImage ('compressed')")
    slot: int = _doc("model image slot this camera feeds (0 = base view in pi0.5)")
    width: int | None = _doc("expected width in pixels; left out = not checked", default=None)
    height: int | None = _doc("expected height in pixels; left out = not checked", default=None)


@dataclass(frozen=True)
class ActionGroupConfig:
    """A set of action dims commanded through one controller interface."""

    name: str
    kind: Literal["joint_trajectory", "base_twist"] = _doc(
        "trajectory_msgs/JointTrajectory for a joint_trajectory_controller, or "
        "a velocity (Twist or TwistStamped, see twist_type) for a mobile base")
    controller_topic: str = _doc("topic the controller listens on (the command_mux output)")
    policy_topic: str = _doc("topic the policy node publishes this group on (mux input)")
    teleop_topic: str = _doc("topic teleoperation publishes this group on (mux input)")
    joints: tuple[str, ...] = _doc("joint_trajectory: the joints of this group", default=())
    dims: tuple[str, ...] = _doc("base_twist: commanded velocity dims, of vx, vy, wz", default=())
    max_velocity: tuple[float, ...] = _doc(
        "base_twist: largest |velocity| per dim (m/s, rad/s)", default=())
    max_acceleration: tuple[float, ...] = _doc(
        "base_twist: largest velocity change per second per dim (m/s^2, rad/s^2)", default=())
    twist_type: Literal["twist_stamped", "twist"] | None = _doc(
        "base_twist: the message on all three topics: geometry_msgs/TwistStamped ('twist_stamped', the "
        "default: the base controllers of ROS 2 Jazzy and newer take it) or geometry_msgs/Twist ('twist')",
        default=None)

    @property
    def stamped(self) -> bool:
        """A base group commanded with geometry_msgs/TwistStamped (the default) rather than Twist."""
        return self.kind == "base_twist" and self.twist_type != "twist"


@dataclass(frozen=True)
class ChunkConfig:
    horizon_steps: int = _doc("how many of the model's action steps are used", range=(1, 1000))
    execute_steps: int = _doc("request the next chunk once this many steps have run", range=(1, 1000))
    min_remaining_steps: int = _doc("also request when fewer steps than this remain", range=(0, 999))
    step_duration_s: float = _doc("time between two action steps (s)", range=(0.0, 10.0))
    blend_steps: int = _doc("steps over which a new chunk is cross-faded in (0 = none; mode blend only)",
                            range=(0, 1000))
    mode: Literal["blend", "rtc"] = _doc(
        "how a new chunk joins the running one: blend (cross-fade blend_steps) or rtc (real-time chunking: "
        "the model samples the new chunk guided toward the running one)", default="blend")
    rtc_margin_steps: int = _doc(
        "rtc: steps added to the measured delay (p90 latency / step_duration_s, rounded up); an "
        "under-estimate makes the robot jump", default=1, range=(0, 1000))


@dataclass(frozen=True)
class SyncConfig:
    queue_size: int = _doc("messages kept per synchronized input", range=(1, 10000))
    slop_s: float = _doc("largest stamp difference within one observation (s)", range=(0.0, 10.0))
    max_age_s: float = _doc("observations older than this are never acted on (s)", range=(0.0, 60.0))


@dataclass(frozen=True)
class ModelConfig:
    checkpoint: str = _doc("checkpoint directory, 'demo' for the shipped single_arm demo checkpoint, or 'tiny' for "
                           "random tiny weights")
    device: str = _doc("torch device: cpu, cuda, cuda:N or auto")
    compile: Literal["off", "default", "max-autotune"] = _doc(
        "torch.compile the prefix pass and the expert step (the first chunks compile: slow start); "
        "quote \"off\" in YAML, where a bare off is a boolean", default="off")
    cuda_graph: bool = _doc("replay each chunk as one captured CUDA graph (needs a CUDA device)", default=False)
    remote: str | None = _doc(
        "ws://host:port of a `ki-vla serve` policy server: the model runs there, not in this process "
        "(token from the KI_VLA_SERVE_TOKEN environment variable)", default=None)
    remote_timeout_s: float = _doc("remote: longest wait for a reply before holding (s)", default=2.0)
    remote_layout: Literal["ki_vla", "libero", "droid", "aloha"] = _doc(
        "remote: the observation dict sent: ki_vla (a `ki-vla serve` server: sizes from its metadata, real-time "
        "chunking) or openpi's libero, droid or aloha example-client layout (an openpi server: camera slot i -> the "
        "layout's i-th image, sent 224x224; sizes from this config; horizon from the replies)", default="ki_vla")
    remote_extra_action_dims: Literal["error", "drop"] = _doc(
        "remote, openpi layouts: a reply with more action dims than the robot has (openpi models pad to 32) is an "
        "error (hold) or, with drop, cut to the first action_dim dims", default="error")


@dataclass(frozen=True)
class EmbodimentParams:
    """The `/**` block: what the robot is; every node reads it."""

    robot_name: str = _doc("embodiment name, reported in diagnostics")
    control_rate_hz: float = _doc("rate of streamed commands (Twist, mux output) (Hz)")
    joint_states_topic: str = _doc("sensor_msgs/JointState topic")
    joints: tuple[str, ...] = _doc("joint names in model order (state and action vectors)")
    joint_limits: dict[str, JointLimits] = _doc("limits per joint, one entry per joint")
    cameras: dict[str, CameraConfig] = _doc("cameras by name")
    action_groups: dict[str, ActionGroupConfig] = _doc("action groups by name")
    odom_topic: str | None = _doc(
        "nav_msgs/Odometry topic; its twist joins the state (mobile bases)", default=None)


@dataclass(frozen=True)
class PolicyNodeParams:
    chunk: ChunkConfig = _doc("action chunk execution")
    sync: SyncConfig = _doc("observation synchronization")
    model: ModelConfig = _doc("the VLA model")
    default_instruction: str = _doc("prompt used until an instruction arrives", default="")


@dataclass(frozen=True)
class PlannerConfig:
    enabled: bool = _doc("run the language planner (high-level task -> subtask)")
    rate_hz: float = _doc("subtask decoding rate (Hz)", range=(0.0, 100.0))
    hysteresis_count: int = _doc("consecutive identical decodes before the subtask changes", range=(1, 100))
    max_new_tokens: int = _doc("longest subtask in tokens", range=(1, 1024))
    max_subtask_chars: int = _doc(
        "a decoded subtask longer than this is treated as garbage and ignored", range=(1, 10000), default=200)
    max_image_age_s: float = _doc(
        "plan only on camera images at most this old; the subtask is a slow, high-level decision, so "
        "this is looser than the policy's sync.max_age_s (s)", range=(0.0, 60.0), default=1.0)


@dataclass(frozen=True)
class MuxConfig:
    initial_mode: Literal["teleop", "policy", "hold"] = _doc("mode at startup")
    teleop_timeout_s: float = _doc("teleop silent this long -> hold (s)", range=(0.0, 60.0))
    policy_timeout_s: float = _doc("policy silent this long -> hold (s)", range=(0.0, 60.0))
    max_step_rad: float = _doc("largest joint step in the output stream, e.g. at hand-off (rad)", range=(0.0, 3.15))
    ramp_step_duration_s: float = _doc(
        "time per inserted hand-off ramp step, and time to reach a hold point; ramp speed is "
        "max_step_rad / ramp_step_duration_s (s)", range=(0.0, 10.0), default=0.1)
    joint_state_max_age_s: float = _doc(
        "a measured joint state older than this is not used to start or hold (s)", range=(0.0, 60.0), default=0.5)


NODE_BLOCKS: dict[str, type] = {
    SHARED_BLOCK: EmbodimentParams,
    "policy_node": PolicyNodeParams,
    "planner_node": PlannerConfig,
    "command_mux": MuxConfig,
}


@dataclass(frozen=True)
class RobotConfig:
    """One embodiment, composed from the node blocks of its YAML file."""

    source: str
    name: str
    control_rate_hz: float
    joint_states_topic: str
    odom_topic: str | None
    joints: tuple[str, ...]
    joint_limits: Mapping[str, JointLimits]
    cameras: tuple[CameraConfig, ...]  # sorted by model slot
    action_groups: tuple[ActionGroupConfig, ...]
    chunk: ChunkConfig
    sync: SyncConfig
    model: ModelConfig
    default_instruction: str
    planner: PlannerConfig
    mux: MuxConfig

    @property
    def base_group(self) -> ActionGroupConfig | None:
        return next((g for g in self.action_groups if g.kind == "base_twist"), None)

    @property
    def action_names(self) -> tuple[str, ...]:
        """Action vector layout: the joints in model order, then `<base group>_<dim>` (base_vx, as in ActionChunk.msg)."""
        base = self.base_group
        return self.joints + (tuple(f"{base.name}_{d}" for d in base.dims) if base else ())

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def state_names(self) -> tuple[str, ...]:
        """State vector layout: joint positions, then base velocities when odometry is used."""
        base = self.base_group
        if self.odom_topic is None or base is None:
            return self.joints
        return self.joints + tuple(f"{base.name}_{d}" for d in base.dims)

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def num_image_slots(self) -> int:
        return max(c.slot for c in self.cameras) + 1

    @property
    def default_delta_action_dims(self) -> tuple[int, ...]:
        """Action dims a model should predict as offsets from the state (KIVLAConfig.delta_action_dims):
        joint positions with the same index in the state, except joints named as grippers, whose
        targets are usually absolute (open / closed), as in openpi's DeltaActions masks."""
        return default_delta_action_dims(self.state_names, self.action_names)

    def camera(self, name: str) -> CameraConfig:
        for camera in self.cameras:
            if camera.name == name:
                return camera
        raise KeyError(f"no camera {name!r} in {self.source}; cameras: "
                       f"{[c.name for c in self.cameras]}")

    def action_group(self, name: str) -> ActionGroupConfig:
        for group in self.action_groups:
            if group.name == name:
                return group
        raise KeyError(f"no action group {name!r} in {self.source}; groups: "
                       f"{[g.name for g in self.action_groups]}")

    def action_indices(self, group: ActionGroupConfig | str) -> tuple[int, ...]:
        """Where a group's joints (or base dims) sit in the action vector."""
        group = self.action_group(group) if isinstance(group, str) else group
        index = {n: i for i, n in enumerate(self.action_names)}
        if group.kind == "base_twist":
            return tuple(index[f"{group.name}_{d}"] for d in group.dims)
        return tuple(index[j] for j in group.joints)


GRIPPER_WORDS = ("gripper", "finger", "jaw", "claw")


def is_gripper_joint(name: str) -> bool:
    """A joint named as a gripper (panda_finger_joint1, left_gripper, jaw): absolute by default."""
    return any(word in name.lower() for word in GRIPPER_WORDS)


def default_delta_action_dims(state_names, action_names) -> tuple[int, ...]:
    """Action dims predicted as offsets by default: a joint position whose state dim has the same
    index and name, unless it is named as a gripper; base velocities (<group>_vx, _vy, _wz, as
    RobotConfig.action_names names them) stay absolute."""
    return tuple(i for i, name in enumerate(action_names)
                 if i < len(state_names) and state_names[i] == name and not is_gripper_joint(name)
                 and name.rsplit("_", 1)[-1] not in BASE_TWIST_DIMS)


# ----------------------------------------------------------------------------- loading


def resolve_config_path(path_or_name: str | Path) -> Path:
    """A path as given, or a bare name like 'single_arm' -> config/single_arm.yaml.

    Names are looked up in the source tree first (a developer checkout), then in the
    installed package's share directory (ament_index_python, when importable).
    """
    text = str(path_or_name)
    if isinstance(path_or_name, Path) or "/" in text or text.endswith((".yaml", ".yml")):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(text, "<file>", text, "an existing YAML file")
        return path
    candidates = [SOURCE_CONFIG_DIR]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE_NAME)) / "config")
    except Exception:  # not installed, AMENT_PREFIX_PATH unset: the source tree is enough
        pass
    for directory in candidates:
        path = directory / f"{text}.yaml"
        if path.is_file():
            return path
    known = sorted({p.stem for d in candidates if d.is_dir() for p in d.glob("*.yaml")})
    raise ConfigError(text, "<name>", text,
                      f"a config file or one of the shipped configs {known} "
                      f"(searched {[str(d) for d in candidates]})")


def load_robot_config(path_or_name: str | Path) -> RobotConfig:
    path = resolve_config_path(path_or_name)
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "<file>", "...", f"valid YAML ({exc})") from exc
    return parse_robot_config(document, source=str(path))


def parse_robot_config(document: Any, source: str = "<config>") -> RobotConfig:
    """Check and build a RobotConfig from an already parsed YAML document."""
    if not isinstance(document, dict):
        raise ConfigError(source, "<document>", document,
                          f"a mapping of node blocks {list(NODE_BLOCKS)}")
    _reject_unknown(source, "", document, NODE_BLOCKS)
    blocks: dict[str, Any] = {}
    for node, schema in NODE_BLOCKS.items():
        if node not in document:
            raise ConfigError(source, node, None,
                              f"a '{node}: {{{PARAMS_KEY}: ...}}' block (missing)")
        block = document[node]
        if not isinstance(block, dict) or set(block) != {PARAMS_KEY}:
            raise ConfigError(source, node, block, f"a mapping with the single key '{PARAMS_KEY}'")
        blocks[node] = _parse_dataclass(schema, block[PARAMS_KEY], f"{node}.{PARAMS_KEY}", source)
    config = _compose(source, blocks)
    _check(config, source)
    return config


def _compose(source: str, blocks: Mapping[str, Any]) -> RobotConfig:
    robot: EmbodimentParams = blocks[SHARED_BLOCK]
    policy: PolicyNodeParams = blocks["policy_node"]
    return RobotConfig(
        source=source,
        name=robot.robot_name,
        control_rate_hz=robot.control_rate_hz,
        joint_states_topic=robot.joint_states_topic,
        odom_topic=robot.odom_topic,
        joints=robot.joints,
        joint_limits=types.MappingProxyType(dict(robot.joint_limits)),
        cameras=tuple(sorted(robot.cameras.values(), key=lambda c: c.slot)),
        action_groups=tuple(robot.action_groups.values()),
        chunk=policy.chunk,
        sync=policy.sync,
        model=policy.model,
        default_instruction=policy.default_instruction,
        planner=blocks["planner_node"],
        mux=blocks["command_mux"],
    )


# ----------------------------------------------------------------------------- typed parsing


def _reject_unknown(source: str, path: str, mapping: Mapping[str, Any], known: Any) -> None:
    known = list(known)
    for key in mapping:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            expected = f"no such key; expected one of {known}"
            if hint:
                expected += f" (did you mean '{hint[0]}'?)"
            raise ConfigError(source, _join(path, str(key)), mapping[key], expected)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _parse_dataclass(cls: type, raw: Any, path: str, source: str, name: str | None = None) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(source, path, raw, f"a mapping with keys {_field_names(cls)}")
    hints = typing.get_type_hints(cls)
    settable = [f for f in fields(cls) if f.name != "name"]
    _reject_unknown(source, path, raw, [f.name for f in settable])
    values: dict[str, Any] = {} if name is None else {"name": name}
    for f in settable:
        key_path = _join(path, f.name)
        if f.name in raw:
            values[f.name] = _parse_value(hints[f.name], raw[f.name], key_path, source)
        elif f.default is MISSING and f.default_factory is MISSING:
            doc = f.metadata.get("description", "")
            raise ConfigError(source, key_path, None, f"a value (missing key: {doc})")
    return cls(**values)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls) if f.name != "name"]


def _parse_value(hint: Any, raw: Any, path: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):  # `X | None`: None only by leaving the key out
        (inner,) = [a for a in args if a is not type(None)]
        if raw is None:
            raise ConfigError(source, path, raw,
                              "a value; ROS parameters have no null, leave the key out instead")
        return _parse_value(inner, raw, path, source)
    if origin is Literal:
        if raw not in args:
            raise ConfigError(source, path, raw, f"one of {list(args)}")
        return raw
    if origin is tuple:
        if not isinstance(raw, list):
            raise ConfigError(source, path, raw, f"a list of {args[0].__name__}")
        return tuple(_parse_value(args[0], item, f"{path}[{i}]", source) for i, item in enumerate(raw))
    if origin is dict:
        if not isinstance(raw, dict) or not raw:
            raise ConfigError(source, path, raw, f"a non-empty mapping of name -> {args[1].__name__}")
        return {str(key): _parse_dataclass(args[1], value, _join(path, str(key)), source, name=str(key))
                for key, value in raw.items()}
    if isinstance(hint, type) and hasattr(hint, "__dataclass_fields__"):
        return _parse_dataclass(hint, raw, path, source)
    return _parse_scalar(hint, raw, path, source)


def _parse_scalar(hint: type, raw: Any, path: str, source: str) -> Any:
    if hint is bool:
        if not isinstance(raw, bool):
            raise ConfigError(source, path, raw, "true or false")
        return raw
    if hint is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(source, path, raw, "an integer")
        return raw
    if hint is float:
        if isinstance(raw, int) and not isinstance(raw, bool):
            raise ConfigError(source, path, raw,
                              f"a float (write {raw}.0: ROS parameters are typed and a double "
                              "parameter rejects an integer)")
        if not isinstance(raw, float) or not math.isfinite(raw):
            raise ConfigError(source, path, raw, "a finite float")
        return raw
    if hint is str:
        if not isinstance(raw, str) or not raw.strip():
            raise ConfigError(source, path, raw, "a non-empty string")
        return raw
    raise TypeError(f"config schema uses unsupported type {hint!r} at {path}")


# ----------------------------------------------------------------------------- consistency

_DEVICE = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")
_REMOTE = re.compile(r"^wss?://[^\s/:]+:\d+(/\S*)?$")


def _check(config: RobotConfig, source: str) -> None:
    """Cross-field checks; each names the key path where the fix belongs."""

    def fail(path: str, value: Any, expected: str) -> None:
        raise ConfigError(source, path, value, expected)

    shared = f"{SHARED_BLOCK}.{PARAMS_KEY}"
    policy = f"policy_node.{PARAMS_KEY}"
    if config.control_rate_hz <= 0:
        fail(f"{shared}.control_rate_hz", config.control_rate_hz, "a rate > 0")

    joints = config.joints
    if not joints:
        fail(f"{shared}.joints", list(joints), "at least one joint")
    for i, joint in enumerate(joints):
        if joint in joints[:i]:
            fail(f"{shared}.joints[{i}]", joint, "each joint listed once")

    for joint in joints:
        if joint not in config.joint_limits:
            fail(f"{shared}.joint_limits", sorted(config.joint_limits),
                 f"an entry for joint '{joint}' (every joint needs limits)")
    for name, limits in config.joint_limits.items():
        path = f"{shared}.joint_limits.{name}"
        if name not in joints:
            fail(path, name, f"a joint listed in 'joints' {list(joints)}")
        if limits.lower >= limits.upper:
            fail(f"{path}.lower", limits.lower, f"lower < upper ({limits.upper})")
        if limits.max_velocity <= 0:
            fail(f"{path}.max_velocity", limits.max_velocity, "a velocity > 0")

    slots: dict[int, str] = {}
    for camera in config.cameras:
        path = f"{shared}.cameras.{camera.name}"
        if camera.slot < 0:
            fail(f"{path}.slot", camera.slot, "a model slot index >= 0")
        if camera.slot in slots:
            fail(f"{path}.slot", camera.slot, f"a slot not used by camera '{slots[camera.slot]}'")
        slots[camera.slot] = camera.name
        for key in ("width", "height"):
            value = getattr(camera, key)
            if value is not None and value <= 0:
                fail(f"{path}.{key}", value, "a size in pixels > 0")

    owner: dict[str, str] = {}
    base_groups = []
    for group in config.action_groups:
        path = f"{shared}.action_groups.{group.name}"
        if group.kind == "joint_trajectory":
            for key in ("dims", "max_velocity", "max_acceleration", "twist_type"):
                if getattr(group, key):
                    value = getattr(group, key)
                    fail(f"{path}.{key}", value if isinstance(value, str) else list(value),
                         "no value: only base_twist groups have it")
            if not group.joints:
                fail(f"{path}.joints", list(group.joints), "at least one joint")
            for i, joint in enumerate(group.joints):
                if joint not in joints:
                    fail(f"{path}.joints[{i}]", joint, f"one of the configured joints {list(joints)}")
                if joint in owner:
                    fail(f"{path}.joints[{i}]", joint, f"a joint not already in group '{owner[joint]}'")
                owner[joint] = group.name
        else:
            base_groups.append(group)
            if group.joints:
                fail(f"{path}.joints", list(group.joints), "no joints: a base_twist group has dims")
            if not group.dims:
                fail(f"{path}.dims", [], f"at least one of {list(BASE_TWIST_DIMS)}")
            for i, dim in enumerate(group.dims):
                if dim not in BASE_TWIST_DIMS or dim in group.dims[:i]:
                    fail(f"{path}.dims[{i}]", dim, f"one of {list(BASE_TWIST_DIMS)}, each once")
            for key in ("max_velocity", "max_acceleration"):
                values = getattr(group, key)
                if len(values) != len(group.dims):
                    fail(f"{path}.{key}", list(values), f"one value per dim {list(group.dims)}")
                for i, value in enumerate(values):
                    if value <= 0:
                        fail(f"{path}.{key}[{i}]", value, "a limit > 0")
    for joint in joints:
        if joint not in owner:
            fail(f"{shared}.action_groups", [g.name for g in config.action_groups],
                 f"a joint_trajectory group containing joint '{joint}' (every joint is commanded)")
    for name in config.joints:
        if base_groups and name in config.action_names[len(config.joints):]:
            fail(f"{shared}.joints", name, "joint names distinct from the base action names "
                 f"{list(config.action_names[len(config.joints):])}")
    if len(base_groups) > 1:
        fail(f"{shared}.action_groups.{base_groups[1].name}.kind", "base_twist",
             f"at most one base_twist group (already '{base_groups[0].name}')")
    if config.odom_topic is not None and not base_groups:
        fail(f"{shared}.odom_topic", config.odom_topic, "no value unless there is a base_twist group")

    chunk, cpath = config.chunk, f"{policy}.chunk"
    if chunk.horizon_steps < 1:
        fail(f"{cpath}.horizon_steps", chunk.horizon_steps, "at least 1 step")
    if not 1 <= chunk.execute_steps <= chunk.horizon_steps:
        fail(f"{cpath}.execute_steps", chunk.execute_steps,
             f"between 1 and horizon_steps ({chunk.horizon_steps})")
    if not 0 <= chunk.min_remaining_steps < chunk.horizon_steps:
        fail(f"{cpath}.min_remaining_steps", chunk.min_remaining_steps,
             f"between 0 and horizon_steps - 1 ({chunk.horizon_steps - 1})")
    if chunk.step_duration_s <= 0:
        fail(f"{cpath}.step_duration_s", chunk.step_duration_s, "a duration > 0")
    if not 0 <= chunk.blend_steps <= chunk.horizon_steps:
        fail(f"{cpath}.blend_steps", chunk.blend_steps,
             f"between 0 and horizon_steps ({chunk.horizon_steps})")

    if chunk.rtc_margin_steps < 0:
        fail(f"{cpath}.rtc_margin_steps", chunk.rtc_margin_steps, "at least 0")

    sync, spath = config.sync, f"{policy}.sync"
    if sync.queue_size < 1:
        fail(f"{spath}.queue_size", sync.queue_size, "at least 1")
    if sync.slop_s < 0:
        fail(f"{spath}.slop_s", sync.slop_s, "a duration >= 0")
    if sync.max_age_s <= 0:
        fail(f"{spath}.max_age_s", sync.max_age_s, "a duration > 0")

    if not _DEVICE.match(config.model.device):
        fail(f"{policy}.model.device", config.model.device, "cpu, cuda, cuda:N, mps or auto")
    if config.model.cuda_graph and not config.model.device.startswith(("cuda", "auto")):
        fail(f"{policy}.model.cuda_graph", True, f"false: CUDA graphs need device cuda or auto, "
             f"not '{config.model.device}'")

    if config.model.remote is not None and not _REMOTE.match(config.model.remote):
        fail(f"{policy}.model.remote", config.model.remote, "ws://host:port or wss://host:port")
    if not config.model.remote_timeout_s > 0:
        fail(f"{policy}.model.remote_timeout_s", config.model.remote_timeout_s, "a duration > 0")
    layout = config.model.remote_layout
    if layout != "ki_vla":
        from ki_vla_ros.serve.layouts import LAYOUTS  # numpy only

        slots = len(LAYOUTS[layout].images)
        if config.num_image_slots > slots:
            fail(f"{policy}.model.remote_layout", layout, f"a layout with {config.num_image_slots} image slots "
                 f"(the cameras use slots up to {config.num_image_slots - 1}); {layout} has {slots}")
        if layout == "droid" and config.state_dim < 2:
            fail(f"{policy}.model.remote_layout", layout, f"droid splits the state into joint_position + "
                 f"gripper_position (the last value); this robot's state has {config.state_dim} value(s)")
        if chunk.mode == "rtc":
            fail(f"{cpath}.mode", "rtc", f"blend: model.remote_layout {layout} talks to an openpi server, which "
                 "does not take the running chunk (real-time chunking needs remote_layout ki_vla)")

    planner = f"planner_node.{PARAMS_KEY}"
    if config.planner.rate_hz <= 0:
        fail(f"{planner}.rate_hz", config.planner.rate_hz, "a rate > 0")
    if config.planner.hysteresis_count < 1:
        fail(f"{planner}.hysteresis_count", config.planner.hysteresis_count, "at least 1")
    if config.planner.max_new_tokens < 1:
        fail(f"{planner}.max_new_tokens", config.planner.max_new_tokens, "at least 1")
    if config.planner.max_subtask_chars < 1:
        fail(f"{planner}.max_subtask_chars", config.planner.max_subtask_chars, "at least 1")
    if not config.planner.max_image_age_s > 0:
        fail(f"{planner}.max_image_age_s", config.planner.max_image_age_s, "a duration > 0")

    mux = f"command_mux.{PARAMS_KEY}"
    for key in ("teleop_timeout_s", "policy_timeout_s", "max_step_rad", "ramp_step_duration_s",
                "joint_state_max_age_s"):
        value = getattr(config.mux, key)
        if value <= 0:
            fail(f"{mux}.{key}", value, "a value > 0")


# ----------------------------------------------------------------------------- ROS parameters


@dataclass(frozen=True)
class ParameterSpec:
    """One tunable of a node block as a ROS parameter: `chunk.execute_steps` for the YAML's
    policy_node: {ros__parameters: {chunk: {execute_steps: ...}}}, as a parameter file names it."""

    name: str
    kind: type  # bool, int, float or str
    description: str
    value: Any  # the config's value: the YAML is the single source of defaults
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()  # a Literal's values


def _block_value(config: RobotConfig, node: str) -> Any:
    """The parsed node block of `config` (a PolicyNodeParams, PlannerConfig or MuxConfig)."""
    if node == "policy_node":
        return PolicyNodeParams(config.chunk, config.sync, config.model, config.default_instruction)
    if node == "planner_node":
        return config.planner
    if node == "command_mux":
        return config.mux
    raise ValueError(f"no parameters for node {node!r}; expected policy_node, planner_node or command_mux")


def node_parameters(config: RobotConfig, node: str) -> list[ParameterSpec]:
    """The tunables of `node`'s block (scalars, nested blocks flattened with dots), with the
    config's values, descriptions and ranges."""
    specs = []

    def walk(obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in fields(obj):
            hint, value, name = hints[f.name], getattr(obj, f.name), prefix + f.name
            if hasattr(hint, "__dataclass_fields__"):
                walk(value, name + ".")
                continue
            choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
            kind = str if choices else hint
            if hint == (str | None):  # ROS has no null: an optional text is "" when left out
                kind, value = str, "" if value is None else value
            specs.append(ParameterSpec(name, kind, f.metadata.get("description", ""), value,
                                       f.metadata.get("range"), tuple(choices)))

    walk(_block_value(config, node), "")
    return specs


def with_node_parameters(config: RobotConfig, node: str, values: Mapping[str, Any]) -> RobotConfig:
    """`config` with some of `node`'s tunables changed ({"chunk.execute_steps": 3}); checked as the
    YAML is, so a bad value raises ConfigError naming the key path, the value and what was expected."""
    block = _block_value(config, node)
    raw = _to_raw(block)
    for name, value in values.items():
        *parents, key = name.split(".")
        target = raw
        for part in parents:
            target = target.setdefault(part, {})
        target[key] = value
    path = f"{node}.{PARAMS_KEY}"
    parsed = _parse_dataclass(type(block), _drop_defaults(type(block), raw), path, config.source)
    if node == "policy_node":
        changed = replace(config, chunk=parsed.chunk, sync=parsed.sync, model=parsed.model,
                          default_instruction=parsed.default_instruction)
    else:
        changed = replace(config, **{"planner" if node == "planner_node" else "mux": parsed})
    _check(changed, config.source)
    return changed


def _to_raw(obj: Any) -> dict[str, Any]:
    return {f.name: (_to_raw(v) if hasattr(v, "__dataclass_fields__") else v)
            for f in fields(obj) for v in [getattr(obj, f.name)]}


def _drop_defaults(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    """raw without the optional keys that hold their default (ROS has no null and an empty string
    is no value: a parameter at its default means the key left out)."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name not in raw:
            continue
        value = raw[f.name]
        if hasattr(hints[f.name], "__dataclass_fields__") and isinstance(value, dict):
            value = _drop_defaults(hints[f.name], value)
        elif f.default is not MISSING and (value == f.default or (f.default is None and value == "")):
            continue
        out[f.name] = value
    return out
