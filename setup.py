"""Python packaging for ki_vla_ros.

The messages (msg/) are built by CMake (rosidl); this file installs the Python package and
the `ki-vla` command. Two routes use it differently:

* venv route (`make setup`): CMake installs the generated messages into the venv, then
  `pip install -e . --config-settings editable_mode=compat` installs this package in
  editable mode and the console scripts.
* colcon route: the package is an ament_cmake package (package.xml build_type), CMake's
  ament_python_install_package() installs the Python code and this file is not used.
"""
from setuptools import find_packages, setup

NODES = ["policy_node", "planner_node", "command_mux", "sim_robot"]

setup(
    name="ki_vla_ros",
    version="0.1.0",
    description="Knowledge-insulated vision-language-action models on ROS 2 robots",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["ki_vla_ros", "ki_vla_ros.*"]),
    # Runtime dependencies are pinned in requirements.txt; the ROS 2 ones come from a ROS
    # install or the PyPI wheels, which pip metadata cannot express for both routes.
    install_requires=[],
    entry_points={
        "console_scripts": ["ki-vla = ki_vla_ros.cli:main"]
        + [f"ki-vla-{n.replace('_', '-')} = ki_vla_ros.ros.{n}:main" for n in NODES],
    },
)
