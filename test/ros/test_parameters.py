"""The YAML tunables are typed ROS parameters: described, ranged, checked by a callback that
says why it rejects a value, read-only where they cannot change at run time."""
from __future__ import annotations

import pytest
from ros_helpers import params


def _set(node, **values):
    from rclpy.parameter import Parameter

    return node.set_parameters([Parameter(k, value=v) for k, v in values.items()])[0]


def test_mux_limits_are_typed_described_ranged_and_changed_at_run_time(ros_graph):
    from rcl_interfaces.msg import ParameterType

    from ki_vla_ros.ros.command_mux import CommandMuxNode

    mux = ros_graph.add(CommandMuxNode(context=ros_graph.context, parameter_overrides=params(config="single_arm")))
    assert mux.get_parameter("policy_timeout_s").value == mux.config.mux.policy_timeout_s  # the YAML's value
    described = mux.describe_parameter("policy_timeout_s")
    assert described.type == ParameterType.PARAMETER_DOUBLE and "policy silent" in described.description
    assert described.floating_point_range[0].from_value == 0.0 and not described.read_only
    assert mux.describe_parameter("initial_mode").additional_constraints == "one of ['teleop', 'policy', 'hold']"

    result = _set(mux, policy_timeout_s=0.0)  # inside the declared range, but the config needs > 0
    assert not result.successful
    assert "command_mux.ros__parameters.policy_timeout_s = 0.0: a value > 0" in result.reason
    assert not _set(mux, policy_timeout_s=-1.0).successful  # outside the range
    assert not _set(mux, max_step_rad=1).successful  # an integer for a double
    assert _set(mux, policy_timeout_s=2.5).successful
    assert mux.mux.config.policy_timeout_s == 2.5  # the mux's timeout rule uses it from now on

    for name, value in (("initial_mode", "hold"), ("config", "mobile")):
        result = _set(mux, **{name: value})
        assert not result.successful and "read-only" in result.reason, (name, result.reason)


def test_policy_settings_change_only_while_unconfigured_and_bad_ones_are_refused(ros_graph):
    from ki_vla_ros.ros.policy_node import PolicyNode

    node = ros_graph.add(PolicyNode(context=ros_graph.context, parameter_overrides=params(
        config="single_arm", checkpoint="tiny", autostart=False, torch_threads=1)))
    result = _set(node, **{"chunk.execute_steps": 500})
    assert not result.successful
    assert "policy_node.ros__parameters.chunk.execute_steps = 500: between 1 and horizon_steps" in result.reason
    assert _set(node, **{"chunk.execute_steps": 3}).successful
    for name, value in (("torch_threads", 2), ("checkpoint", "other"), ("config", "mobile")):
        assert "read-only" in _set(node, **{name: value}).reason, name

    node.trigger_configure()
    assert node.configure_error == "" and node.config.chunk.execute_steps == 3  # what configure read
    result = _set(node, **{"chunk.execute_steps": 4})
    assert not result.successful and "deactivate and clean up the node" in result.reason
    node.trigger_cleanup()
    assert _set(node, **{"chunk.execute_steps": 4}).successful


def test_a_bad_start_up_override_fails_configure_naming_the_key_and_a_bad_range_is_refused(ros_graph):
    from rclpy.exceptions import InvalidParameterValueException

    from ki_vla_ros.ros.policy_node import PolicyNode

    node = ros_graph.add(PolicyNode(context=ros_graph.context, parameter_overrides=params(
        config="single_arm", checkpoint="tiny", **{"sync.slop_s": 1.5, "sync.max_age_s": 0.0})))
    assert "sync.max_age_s = 0.0: a duration > 0" in node.configure_error
    with pytest.raises(InvalidParameterValueException, match="torch_threads"):
        PolicyNode("policy_node_bad_threads", context=ros_graph.context,
                   parameter_overrides=params(config="single_arm", autostart=False, torch_threads=-5))


def test_planner_rate_changes_its_timer_and_enabled_is_read_only(ros_graph):
    from ki_vla_ros.ros.planner_node import PlannerNode

    planner = ros_graph.add(PlannerNode(context=ros_graph.context, predictor=object(),
                                        parameter_overrides=params(config="mobile")))
    assert not _set(planner, rate_hz=0.0).successful
    assert _set(planner, rate_hz=5.0).successful
    assert planner._timer.timer_period_ns == 200_000_000 and planner.config.planner.rate_hz == 5.0
    assert _set(planner, hysteresis_count=4).successful and planner.filter.hysteresis_count == 4
    assert "read-only" in _set(planner, enabled=False).reason
