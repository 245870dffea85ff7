"""The embodiment config: shipped files load, every mistake names file, key path and value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from config_files import config_file

from ki_vla_ros.runtime.config import (
    SOURCE_CONFIG_DIR,
    ConfigError,
    RobotConfig,
    load_robot_config,
    parse_robot_config,
)

SHARED = "/**.ros__parameters"


def shipped(name: str) -> dict:
    return yaml.safe_load((SOURCE_CONFIG_DIR / f"{name}.yaml").read_text())


def load_modified(tmp_path: Path, name: str, change) -> RobotConfig:
    return load_robot_config(config_file(tmp_path, name, change))


@pytest.mark.parametrize("name, action_dim, cameras, planner", [
    ("single_arm", 8, ["base", "wrist"], False),
    ("bimanual", 14, ["cam_high", "cam_left_wrist", "cam_right_wrist"], False),
    ("mobile", 17, ["cam_high", "cam_left_wrist", "cam_right_wrist"], True),
])
def test_each_shipped_config_loads_by_name(name, action_dim, cameras, planner):
    config = load_robot_config(name)
    assert config.name == name
    assert config.action_dim == action_dim
    assert [c.name for c in config.cameras] == cameras
    assert [c.slot for c in config.cameras] == list(range(len(cameras)))
    assert config.planner.enabled is planner
    assert config.source == str(SOURCE_CONFIG_DIR / f"{name}.yaml")


def test_single_arm_is_a_seven_dof_arm_and_a_gripper():
    config = load_robot_config("single_arm")
    assert [g.name for g in config.action_groups] == ["arm", "gripper"]
    assert len(config.action_group("arm").joints) == 7
    assert config.action_indices("gripper") == (7,)
    assert config.action_group("arm").controller_topic == "/panda_arm_controller/joint_trajectory"


def test_mobile_base_dims_follow_the_joints_in_action_and_state():
    config = load_robot_config("mobile")
    assert config.action_names[-3:] == ("base_vx", "base_vy", "base_wz")
    assert config.action_indices("base") == (14, 15, 16)
    assert config.base_group.controller_topic == "/cmd_vel"
    assert config.state_names == config.action_names  # odometry twist joins the state
    assert config.odom_topic == "/odom"


def test_a_path_loads_as_well_as_a_name():
    assert load_robot_config(SOURCE_CONFIG_DIR / "bimanual.yaml").name == "bimanual"
    assert load_robot_config(str(SOURCE_CONFIG_DIR / "bimanual.yaml")).name == "bimanual"


def test_unknown_name_lists_the_shipped_configs():
    with pytest.raises(ConfigError, match=r"single_arm.*bimanual|bimanual.*single_arm"):
        load_robot_config("quadruped")


def test_a_typo_key_raises_naming_the_key_path_and_the_likely_key(tmp_path):
    def typo(doc):
        limits = doc["/**"]["ros__parameters"]["joint_limits"]["panda_joint2"]
        limits["max_velocty"] = limits.pop("max_velocity")

    with pytest.raises(ConfigError) as error:
        load_modified(tmp_path, "single_arm", typo)
    message = str(error.value)
    assert f"{SHARED}.joint_limits.panda_joint2.max_velocty" in message
    assert "did you mean 'max_velocity'" in message
    assert "single_arm_modified.yaml" in message


def test_a_missing_key_raises_naming_it(tmp_path):
    def drop(doc):
        del doc["policy_node"]["ros__parameters"]["sync"]["slop_s"]

    with pytest.raises(ConfigError, match=r"policy_node\.ros__parameters\.sync\.slop_s = None: a value \(missing key"):
        load_modified(tmp_path, "single_arm", drop)


def test_a_missing_node_block_raises_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"command_mux = None"):
        load_modified(tmp_path, "single_arm", lambda doc: doc.pop("command_mux"))


def test_an_unknown_group_joint_names_the_list_index(tmp_path):
    def wrong_joint(doc):
        doc["/**"]["ros__parameters"]["action_groups"]["arm"]["joints"][3] = "panda_joint44"

    with pytest.raises(ConfigError) as error:
        load_modified(tmp_path, "single_arm", wrong_joint)
    assert f"{SHARED}.action_groups.arm.joints[3] = 'panda_joint44'" in str(error.value)
    assert "one of the configured joints" in str(error.value)


def test_an_integer_where_a_float_belongs_is_rejected_as_ros_would(tmp_path):
    def integer_rate(doc):
        doc["/**"]["ros__parameters"]["control_rate_hz"] = 50

    with pytest.raises(ConfigError, match=r"control_rate_hz = 50: a float \(write 50.0"):
        load_modified(tmp_path, "single_arm", integer_rate)


@pytest.mark.parametrize("change, key_path, expectation", [
    (lambda p: p["joint_limits"]["panda_joint1"].update(lower=3.0),
     f"{SHARED}.joint_limits.panda_joint1.lower = 3.0", "lower < upper"),
    (lambda p: p.update(control_rate_hz=-5.0), f"{SHARED}.control_rate_hz = -5.0", "a rate > 0"),
    (lambda p: p["cameras"]["wrist"].update(slot=0), f"{SHARED}.cameras.wrist.slot = 0",
     "not used by camera 'base'"),
    (lambda p: p["cameras"]["base"].update(message_type="jpeg"),
     f"{SHARED}.cameras.base.message_type = 'jpeg'", "one of ['raw', 'compressed']"),
    (lambda p: p["cameras"]["base"].update(width=None), f"{SHARED}.cameras.base.width = None",
     "leave the key out"),
    (lambda p: p["action_groups"]["gripper"].update(joints=["panda_joint7"]),
     f"{SHARED}.action_groups.gripper.joints[0] = 'panda_joint7'", "already in group 'arm'"),
    (lambda p: p["joint_limits"].pop("panda_joint3"), f"{SHARED}.joint_limits",
     "an entry for joint 'panda_joint3'"),
    (lambda p: p["joints"].append("panda_joint1"), f"{SHARED}.joints[8] = 'panda_joint1'",
     "each joint listed once"),
])
def test_inconsistent_values_name_key_value_and_expectation(tmp_path, change, key_path, expectation):
    with pytest.raises(ConfigError) as error:
        load_modified(tmp_path, "single_arm", lambda doc: change(doc["/**"]["ros__parameters"]))
    assert key_path in str(error.value)
    assert expectation in str(error.value)


def test_a_joint_in_no_action_group_is_an_error(tmp_path):
    def orphan(doc):
        doc["/**"]["ros__parameters"]["action_groups"].pop("gripper")

    with pytest.raises(ConfigError, match="containing joint 'panda_finger_joint1'"):
        load_modified(tmp_path, "single_arm", orphan)


def test_chunk_settings_must_fit_the_horizon(tmp_path):
    def too_many(doc):
        doc["policy_node"]["ros__parameters"]["chunk"]["execute_steps"] = 11

    with pytest.raises(ConfigError, match=r"chunk\.execute_steps = 11: between 1 and horizon_steps \(10\)"):
        load_modified(tmp_path, "single_arm", too_many)


def test_base_limits_need_one_value_per_dim(tmp_path):
    def short(doc):
        doc["/**"]["ros__parameters"]["action_groups"]["base"]["max_velocity"] = [0.5, 0.5]

    with pytest.raises(ConfigError, match=r"action_groups\.base\.max_velocity = \[0\.5, 0\.5\]: one value per dim"):
        load_modified(tmp_path, "mobile", short)


def test_a_shared_key_in_a_node_block_is_unknown_there():
    document = shipped("single_arm")
    document["policy_node"]["ros__parameters"]["joints"] = ["a"]
    with pytest.raises(ConfigError, match=r"policy_node\.ros__parameters\.joints = \['a'\]: no such key"):
        parse_robot_config(document, source="inline")


def test_shipped_configs_are_valid_ros_parameter_files():
    """ROS parameter arrays hold one primitive type and never mappings; no nulls."""

    def check(value, path):
        if isinstance(value, dict):
            for key, item in value.items():
                check(item, f"{path}.{key}")
        elif isinstance(value, list):
            assert value, f"{path}: empty arrays have no ROS type"
            assert len({type(v) for v in value}) == 1, f"{path}: mixed types {value}"
            assert not isinstance(value[0], (dict, list)), f"{path}: nested array"
        else:
            assert value is not None, f"{path} is null"

    for name in ("single_arm", "bimanual", "mobile"):
        document = shipped(name)
        for block in document.values():
            assert set(block) == {"ros__parameters"}
            check(block["ros__parameters"], name)


def test_fast_inference_options_parse_and_cuda_graph_on_a_cpu_device_names_the_key(tmp_path):
    def fast(doc, **model):
        doc["policy_node"]["ros__parameters"]["model"].update(model)

    config = load_modified(tmp_path, "single_arm", lambda doc: fast(doc, compile="max-autotune", cuda_graph=True))
    assert (config.model.compile, config.model.cuda_graph) == ("max-autotune", True)
    assert (load_robot_config("bimanual").model.compile, load_robot_config("bimanual").model.cuda_graph) == \
        ("off", False)
    with pytest.raises(ConfigError, match=r"policy_node\.ros__parameters\.model\.cuda_graph = True: false: CUDA "
                                          r"graphs need device cuda or auto, not 'cpu'"):
        load_modified(tmp_path, "single_arm", lambda doc: fast(doc, device="cpu", cuda_graph=True))
    with pytest.raises(ConfigError, match=r"model\.compile = False: one of \['off', 'default', 'max-autotune'\]"):
        load_modified(tmp_path, "single_arm", lambda doc: fast(doc, compile=False))  # YAML's bare `off`


def test_a_base_group_sends_twist_stamped_unless_its_config_says_twist(tmp_path):
    """Jazzy and newer base controllers take geometry_msgs/TwistStamped: the default for a base
    group that does not say; the shipped mobile config keeps Twist explicitly."""
    assert load_robot_config("mobile").base_group.stamped is False

    def no_twist_type(doc):
        del doc["/**"]["ros__parameters"]["action_groups"]["base"]["twist_type"]

    assert load_modified(tmp_path, "mobile", no_twist_type).base_group.stamped is True
    assert not any(g.stamped for g in load_robot_config("single_arm").action_groups)

    def misspelt(doc):
        doc["/**"]["ros__parameters"]["action_groups"]["base"]["twist_type"] = "stamped"

    with pytest.raises(ConfigError, match=r"action_groups\.base\.twist_type = 'stamped': one of \['twist_stamped', "
                                          r"'twist'\]"):
        load_modified(tmp_path, "mobile", misspelt)

    def on_an_arm(doc):
        doc["/**"]["ros__parameters"]["action_groups"]["arm"]["twist_type"] = "twist"

    with pytest.raises(ConfigError, match=r"action_groups\.arm\.twist_type = 'twist': no value: only base_twist"):
        load_modified(tmp_path, "single_arm", on_an_arm)


def test_an_optional_text_setting_is_an_empty_string_parameter_when_left_out():
    """ROS parameters have no null: model.remote (None = the model runs in the node) is declared
    as "", and "" given back means left out."""
    from ki_vla_ros.runtime.config import node_parameters, with_node_parameters

    config = load_robot_config("single_arm")
    assert config.model.remote is None
    spec = {s.name: s for s in node_parameters(config, "policy_node")}["model.remote"]
    assert spec.kind is str and spec.value == ""
    assert with_node_parameters(config, "policy_node", {"model.remote": ""}).model.remote is None
    remote = with_node_parameters(config, "policy_node", {"model.remote": "ws://127.0.0.1:8000"})
    assert remote.model.remote == "ws://127.0.0.1:8000"
