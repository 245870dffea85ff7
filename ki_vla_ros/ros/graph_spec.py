"""Which nodes make up the graph for a robot config: one list for launch files and bringup.

`ros2 launch ki_vla_ros single_arm.launch.py` (real ROS 2 installs) and
`ki-vla bringup single_arm` (the venv, where launch cannot be installed) both start the
nodes returned by `graph_nodes`, with the same names, executables, parameters and
arguments, so the two can never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ki_vla_ros.runtime.config import load_robot_config, resolve_config_path

PACKAGE = "ki_vla_ros"


@dataclass(frozen=True)
class NodeSpec:
    name: str  # node name (each executable's default; not remapped, see command_line)
    executable: str  # lib/ki_vla_ros/<executable> (ros2 run), module ki_vla_ros.ros.<executable>
    parameters: dict = field(default_factory=dict)
    arguments: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return f"ki_vla_ros.ros.{self.executable}"


def graph_nodes(config: str, sim: bool = False, checkpoint: str = "",
                use_sim_time: bool = False) -> list[NodeSpec]:
    """The nodes for robot config `config` (a name in config/ or a YAML path).

    sim adds sim_robot, which plays the robot (joint states, cameras, controllers). With the
    planner enabled in the config, the planner runs inside the policy_node process so both
    share one loaded model. use_sim_time: every node follows /clock (e.g. `ki-vla play --clock`).
    """
    path = str(resolve_config_path(config))
    robot = load_robot_config(path)
    common = {"config": path, **({"use_sim_time": True} if use_sim_time else {})}
    nodes = []
    if sim:
        nodes.append(NodeSpec("sim_robot", "sim_robot", dict(common)))
    nodes.append(NodeSpec("command_mux", "command_mux", dict(common)))
    policy_params = {**common, "checkpoint": checkpoint}
    arguments = ("--with-planner",) if robot.planner.enabled else ()
    nodes.append(NodeSpec("policy_node", "policy_node", policy_params, arguments))
    return nodes


def command_line(spec: NodeSpec, python: str) -> list[str]:
    """The process bringup starts for `spec` (same parameters a launch file passes).

    No `__node` remap: it would rename every node in the process, and policy_node
    --with-planner runs two. Each executable's nodes carry their default names.
    """
    cmd = [python, "-m", spec.module, *spec.arguments, "--ros-args"]
    for key, value in spec.parameters.items():
        cmd += ["-p", f"{key}:={_param_text(value)}"]
    return cmd


def _param_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return "''"
    return str(value)


def launch_node_kwargs(spec: NodeSpec) -> dict:
    """Keyword arguments for launch_ros.actions.Node for `spec`."""
    return {"package": PACKAGE, "executable": spec.executable,
            "parameters": [dict(spec.parameters)], "arguments": list(spec.arguments),
            "output": "screen"}


def launch_description(default_config: str):
    """A LaunchDescription with arguments config, sim and checkpoint (needs launch_ros)."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    def nodes(context):
        config = LaunchConfiguration("config").perform(context)
        sim = LaunchConfiguration("sim").perform(context).lower() in ("true", "1", "yes")
        checkpoint = LaunchConfiguration("checkpoint").perform(context)
        sim_time = LaunchConfiguration("use_sim_time").perform(context).lower() in ("true", "1", "yes")
        return [Node(**launch_node_kwargs(spec)) for spec in graph_nodes(config, sim, checkpoint, sim_time)]

    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=default_config,
                              description="robot config name in config/ or a YAML path"),
        DeclareLaunchArgument("sim", default_value="false",
                              description="also start sim_robot instead of a real robot"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="model checkpoint directory or 'tiny' (default: from the config)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="follow /clock (replaying a bag with ki-vla play --clock)"),
        OpaqueFunction(function=nodes),
    ])
