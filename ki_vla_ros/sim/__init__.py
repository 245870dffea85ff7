"""A small ROS-free simulated robot: table-top scene, cameras, controllers, reach task.

    scene       table + colored blocks, spatial facts ("red block" left of "blue block")
    kinematics  planar two-link arm map joints -> gripper position, its inverse, frames
    render      top-down overview and wrist images drawn with OpenCV
    cameras     which view each configured camera shows, at what size
    trajectory  joint_trajectory_controller semantics for commanded trajectories
    base        velocity-commanded holonomic base with timeout and limits
    robot       SimRobot: the above driven by a RobotConfig, stepped in controller ticks
    expert      scripted reach expert (joint-space demonstrations)
    vqa         questions/answers and captions about a scene (VLM co-training data)
    tasks       ReachTask, episode setup shared by demos and evaluation, generate_episode

Nothing here imports rclpy: the `sim_robot` node wraps SimRobot, and training and
closed-loop evaluation use it directly.
"""

from ki_vla_ros.sim.robot import SimRobot
from ki_vla_ros.sim.scene import Scene, SceneObject
from ki_vla_ros.sim.tasks import ReachTask, generate_episode, start_reach_episode
from ki_vla_ros.sim.vqa import scene_caption, vqa_samples

__all__ = ["SimRobot", "Scene", "SceneObject", "ReachTask", "generate_episode",
           "start_reach_episode", "vqa_samples", "scene_caption"]
