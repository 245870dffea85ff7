"""The YAML tunables of a node as typed ROS parameters, as ros2_controllers declares theirs.

A node declares each tunable of its config block (runtime.config.node_parameters: chunk.*,
sync.*, model.* and default_instruction for the policy node; the planner's and the mux's
settings) with its type, the description from the config schema and, for numbers, a range
(`ros2 param describe` shows them). The default is the value in the robot config's YAML, which
stays the single source of defaults; a parameter file or `-p` overrides it at start-up, and is
checked exactly as the YAML is.

At run time a parameter callback rejects a bad value with the reason (ConfigError's text: the
key path, the value and what was expected), rejects a change the node cannot take now (`busy`
returns why, e.g. a configured policy node), and otherwise hands the changed RobotConfig to
`apply`. Parameters that can never change at run time are declared read-only.
"""

from __future__ import annotations

from typing import Callable, Iterable

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType, SetParametersResult
from rclpy.node import Node

from ki_vla_ros.runtime.config import ConfigError, ParameterSpec, RobotConfig, node_parameters, with_node_parameters

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}


def fixed(description: str, **kwargs) -> ParameterDescriptor:
    """A read-only parameter (set at start-up only): config, checkpoint, autostart, torch_threads..."""
    return ParameterDescriptor(description=description, read_only=True, **kwargs)


TORCH_THREADS = fixed("torch CPU threads for the model; 0 = auto (a quarter of the cores, at least 1)",
                      integer_range=[IntegerRange(from_value=0, to_value=1024, step=1)])
CONFIG = fixed("robot config: a name in the package's config/ (single_arm, bimanual, mobile) or a path to a "
               "YAML file")


def descriptor(spec: ParameterSpec, read_only: bool) -> ParameterDescriptor:
    """The ParameterDescriptor of one tunable: type, description, range or choices, read-only."""
    d = ParameterDescriptor(name=spec.name, type=_TYPES[spec.kind], description=spec.description,
                            read_only=read_only)
    if spec.range is not None and spec.kind is int:
        d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
    elif spec.range is not None and spec.kind is float:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]), to_value=float(spec.range[1]),
                                                     step=0.0)]
    if spec.choices:
        d.additional_constraints = f"one of {list(spec.choices)}"
    return d


def declare_config_parameters(node: Node, block: str, config: RobotConfig, *, read_only: Iterable[str] = (),
                              busy: Callable[[], str] | None = None,
                              apply: Callable[[RobotConfig], None] | None = None) -> RobotConfig:
    """Declare `block`'s tunables on `node` with `config`'s values as defaults; returns `config`
    with the values the parameters got at start-up (ConfigError if an override is bad).

    read_only: tunables that cannot change at run time. busy() -> "" when a change can be taken
    now, else why not. apply(changed_config) is called for each accepted change.
    """
    specs = {spec.name: spec for spec in node_parameters(config, block)}
    fixed = set(read_only)
    for name, spec in specs.items():
        node.declare_parameter(name, spec.value, descriptor(spec, name in fixed))
    started = with_node_parameters(config, block, {n: node.get_parameter(n).value for n in specs})
    current = [started]

    def on_set(parameters) -> SetParametersResult:
        changes = {p.name: p.value for p in parameters if p.name in specs}
        if not changes:
            return SetParametersResult(successful=True)
        reason = busy() if busy is not None else ""
        if reason:
            return SetParametersResult(successful=False, reason=f"{', '.join(sorted(changes))}: {reason}")
        try:
            changed = with_node_parameters(current[0], block, changes)
        except ConfigError as error:
            return SetParametersResult(successful=False, reason=str(error))
        current[0] = changed
        if apply is not None:
            apply(changed)
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)
    return started


def parameter_values(node: Node, block: str, config: RobotConfig) -> RobotConfig:
    """`config` (freshly loaded) with the current values of `block`'s declared tunables on `node`."""
    names = [spec.name for spec in node_parameters(config, block)]
    return with_node_parameters(config, block, {n: node.get_parameter(n).value for n in names
                                                if node.has_parameter(n)})
