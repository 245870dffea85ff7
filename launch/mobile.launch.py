"""Bring up the ki_vla_ros graph for the mobile config.

    ros2 launch ki_vla_ros mobile.launch.py [sim:=true] [checkpoint:=DIR] [config:=FILE]

The node list comes from ki_vla_ros.ros.graph_spec.graph_nodes, the same function
`ki-vla bringup mobile` uses in the venv.
"""
from ki_vla_ros.ros.graph_spec import launch_description


def generate_launch_description():
    return launch_description("mobile")
