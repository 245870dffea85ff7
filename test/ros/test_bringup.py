"""Each shipped config brings up its graph as separate processes (as `ki-vla bringup
CONFIG --sim` does) and commands the expected controller topics with the expected joint
names; the mobile config also streams Twist to the base. Launch files and bringup start
the same nodes with the same parameters."""
from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest
from ros_helpers import Collector

from ki_vla_ros.ros.bringup import Graph
from ki_vla_ros.ros.graph_spec import command_line, graph_nodes, launch_node_kwargs
from ki_vla_ros.runtime.config import load_robot_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ["single_arm", "bimanual", "mobile"]


@pytest.mark.parametrize("name", CONFIGS)
def test_each_config_brings_up_and_commands_its_controllers(name, ros_graph, ros_env, tmp_path):
    from trajectory_msgs.msg import JointTrajectory

    from ki_vla_ros.ros.conversions import twist_type

    config = load_robot_config(name)
    specs = graph_nodes(name, sim=True, checkpoint="tiny")
    assert [s.name for s in specs] == ["sim_robot", "command_mux", "policy_node"]
    probe = ros_graph.node("bringup_probe")
    outputs = {}
    for group in config.action_groups:
        msg_type = JointTrajectory if group.kind == "joint_trajectory" else twist_type(group)
        outputs[group.name] = Collector(probe, msg_type, group.controller_topic)
    graph = Graph(specs, env=ros_env, log_dir=tmp_path)
    try:
        deadline = time.monotonic() + 150
        while not all(len(c) >= 2 for c in outputs.values()):
            exited = graph.exited()
            assert not exited, f"node(s) exited: {exited}; logs: " + "".join(
                (tmp_path / f"{n}.log").read_text()[-2000:] for n in exited)
            assert time.monotonic() < deadline, (
                f"controller topics without commands: {[g for g, c in outputs.items() if len(c) < 2]}; logs in {tmp_path}")
            time.sleep(0.2)
    finally:
        codes = graph.stop()
    for group in config.action_groups:
        messages = outputs[group.name].messages
        if group.kind == "joint_trajectory":
            assert all(list(m.joint_names) == list(group.joints) for m in messages), group.name
            assert all(len(p.positions) == len(group.joints) for m in messages for p in m.points)
    if name == "mobile":
        base = config.base_group
        assert base.controller_topic == "/cmd_vel"
        assert len(outputs[base.name]) >= 2  # Twist streamed through the mux
    assert all(code in (0, -2) for code in codes.values()), codes


@pytest.mark.parametrize("name", CONFIGS)
def test_launch_file_and_bringup_start_the_same_nodes_with_the_same_parameters(name):
    launch_file = REPO / "launch" / f"{name}.launch.py"
    tree = ast.parse(launch_file.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "launch_description"]
    assert len(calls) == 1 and calls[0].args[0].value == name, \
        f"{launch_file.name} must build its nodes with launch_description({name!r})"
    for sim, sim_time in ((False, False), (True, False), (False, True)):
        for spec in graph_nodes(name, sim=sim, checkpoint="tiny", use_sim_time=sim_time):
            launch = launch_node_kwargs(spec)
            cli = command_line(spec, "python")
            assert cli[2] == f"ki_vla_ros.ros.{launch['executable']}"
            cli_params = dict(arg.split(":=", 1) for arg in cli[cli.index("--ros-args"):] if ":=" in arg)
            launch_params = {k: ("true" if v is True else str(v) if v != "" else "''")
                             for k, v in launch["parameters"][0].items()}
            assert ("use_sim_time" in launch_params) == sim_time
            assert cli_params == launch_params
            assert cli[3:cli.index("--ros-args")] == launch["arguments"]


def test_mobile_runs_the_planner_inside_the_policy_process_and_others_do_not():
    assert graph_nodes("mobile")[-1].arguments == ("--with-planner",)
    assert graph_nodes("single_arm")[-1].arguments == ()
