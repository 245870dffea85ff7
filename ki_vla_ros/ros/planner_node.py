"""planner_node: high-level task + cameras -> the low-level subtask the policy follows.

At `rate_hz` it greedily decodes a subtask from the newest camera images and the task on
/ki_vla/task (std_msgs/String, latched: transient local) with the same backbone the policy uses (a separate call to
the same model), passes it through hysteresis (runtime.subtask_filter) so the prompt does
not flicker, and publishes the subtask in force on /ki_vla/subtask (ki_vla_ros/Subtask)
every cycle; `sequence` increments when the text changes. The policy node uses it as its
prompt.

Run inside the policy_node process (`policy_node --with-planner`, what the mobile config
does) the two share one loaded model; run alone, it loads its own.
"""

from __future__ import annotations

import sys
import threading
import time

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from ki_vla_ros.msg import Subtask
from ki_vla_ros.ros import conversions as conv
from ki_vla_ros.ros import parameters as params
from ki_vla_ros.ros.dds import LATCHED_QOS
from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.runtime.model_loading import load_predictor, set_torch_threads
from ki_vla_ros.runtime.observation import ObservationError
from ki_vla_ros.runtime.subtask_filter import SubtaskFilter, SubtaskOutcome
from ki_vla_ros.runtime.topics import SUBTASK_TOPIC, TASK_TOPIC



class PlannerNode(Node):
    def __init__(self, node_name: str = "planner_node", *, predictor=None, context=None, **node_kwargs):
        super().__init__(node_name, context=context, **node_kwargs)
        self.declare_parameter("config", "mobile", params.CONFIG)
        self.declare_parameter("checkpoint", "", params.fixed(
            "model checkpoint directory or 'tiny'; empty = model.checkpoint from the config "
            "(ignored when sharing the policy node's model)"))
        self.declare_parameter("torch_threads", 0, params.TORCH_THREADS)
        # rate_hz, hysteresis_count, ... as typed parameters; changes apply at the next decode
        self.config = params.declare_config_parameters(
            self, "planner_node", load_robot_config(self.get_parameter("config").value), read_only=("enabled",),
            apply=self._apply)
        if predictor is None:
            set_torch_threads(self.get_parameter("torch_threads").value)
        self.predictor = predictor or load_predictor(self.config, self.get_parameter("checkpoint").value or None)
        self.filter = SubtaskFilter.from_config(self.config.planner)
        self.task = ""
        self._images: dict[str, tuple[float, object]] = {}
        self._lock = threading.Lock()
        for camera in self.config.cameras:
            msg_type = Image if camera.message_type == "raw" else CompressedImage
            self.create_subscription(msg_type, camera.topic,
                                     lambda msg, name=camera.name: self._on_image(name, msg),
                                     qos_profile_sensor_data)
        self.create_subscription(String, TASK_TOPIC, self._on_task, LATCHED_QOS)
        self.subtask_pub = self.create_publisher(Subtask, SUBTASK_TOPIC, 10)
        self.decodes = 0
        # Decoding takes a while; its own callback group keeps it off the image callbacks.
        self._plan_group = MutuallyExclusiveCallbackGroup()
        self._timer = self.create_timer(1.0 / self.config.planner.rate_hz, self._plan, callback_group=self._plan_group)

    def _apply(self, config) -> None:
        """A changed planner parameter (ros.parameters checked it): the new settings from now on."""
        with self._lock:
            rate_changed = config.planner.rate_hz != self.config.planner.rate_hz
            self.config = config
            self.filter.hysteresis_count = config.planner.hysteresis_count
            self.filter.max_chars = config.planner.max_subtask_chars
        if rate_changed:
            self.destroy_timer(self._timer)
            self._timer = self.create_timer(1.0 / config.planner.rate_hz, self._plan, callback_group=self._plan_group)

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_task(self, msg: String) -> None:
        with self._lock:
            if msg.data.strip() != self.task:
                self.get_logger().info(f"task: {msg.data.strip()!r}")
            self.task = msg.data.strip()

    def _on_image(self, camera: str, msg) -> None:
        try:
            image = conv.image_to_rgb(msg, camera)
        except ObservationError as error:
            self.get_logger().warning(str(error), throttle_duration_sec=2.0)
            return
        with self._lock:
            self._images[camera] = (conv.time_to_s(msg.header.stamp), image)

    def _plan(self) -> None:
        with self._lock:
            task, images = self.task, dict(self._images)
        if not task or not images:
            return
        now = self.now_s()
        max_age_s = self.config.planner.max_image_age_s
        fresh = {n: img for n, (stamp, img) in images.items() if now - stamp <= max_age_s}
        if len(fresh) < len(self.config.cameras):
            ages = {n: f"{now - stamp:.2f} s" for n, (stamp, _) in images.items()}
            self.get_logger().warning(f"planner: not planning: cameras without an image newer than "
                                      f"planner.max_image_age_s = {max_age_s} s: "
                                      f"{sorted(set(c.name for c in self.config.cameras) - set(fresh))} "
                                      f"(latest image ages: {ages})", throttle_duration_sec=2.0)
            return
        slots = [None] * self.predictor.num_cameras
        for camera in self.config.cameras:
            slots[camera.slot] = fresh[camera.name]
        stamp_s = min(images[n][0] for n in fresh)
        t0 = time.perf_counter()
        candidate = self.predictor.generate_subtask(slots, task, self.config.planner.max_new_tokens)
        latency_s = time.perf_counter() - t0
        self.decodes += 1
        decision = self.filter.offer(candidate)
        if decision.published:
            self.get_logger().info(f"subtask #{decision.sequence}: {decision.subtask!r} ({decision.reason})")
        elif decision.outcome is SubtaskOutcome.IGNORED:
            self.get_logger().warning(f"planner: decoded subtask ignored: {decision.reason}",
                                      throttle_duration_sec=5.0)
        if decision.sequence == 0:
            return
        msg = Subtask(task=task, subtask=decision.subtask, sequence=decision.sequence,
                      generation_latency=conv.s_to_duration(latency_s))
        msg.header.stamp = conv.s_to_time(stamp_s)
        self.subtask_pub.publish(msg)


def main(args=None) -> None:
    from ki_vla_ros.ros.node_main import run_nodes

    run_nodes(args, build=lambda argv: [PlannerNode()])


if __name__ == "__main__":
    main(sys.argv)
