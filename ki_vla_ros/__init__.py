"""ki_vla_ros: run and train knowledge-insulated vision-language-action models with ROS 2.

Layers (imports only go down): model/ (torch + transformers), runtime/ (ROS-free control
logic), ros/ (rclpy nodes), eval/ (rosbag replay), train/ (datasets and the KI recipe).
"""

# The generated message modules (ki_vla_ros.msg and the typesupport libraries) are
# installed by CMake into site-packages/ki_vla_ros, while a developer may import this
# package from the source tree. Extending __path__ lets one import see both halves.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
