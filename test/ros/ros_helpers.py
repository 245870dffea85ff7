"""Helpers for tests with real rclpy nodes: parameters, collectors, observation publishers."""
from __future__ import annotations

import time

import numpy as np


def params(**values):
    """parameter_overrides for a node."""
    from rclpy.parameter import Parameter

    return [Parameter(k, value=v) for k, v in values.items()]


class Collector:
    """Keeps every message of a subscription, with the receive time."""

    def __init__(self, node, msg_type, topic, qos=10):
        self.messages = []
        self.times = []
        node.create_subscription(msg_type, topic, self._on, qos)

    def _on(self, msg):
        self.times.append(time.monotonic())
        self.messages.append(msg)

    def __len__(self):
        return len(self.messages)


class ObservationPublisher:
    """Publishes the single_arm (or any config's) cameras and joint states with one stamp."""

    def __init__(self, node, config):
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image, JointState

        self.node, self.config = node, config
        self.cams = {c.name: node.create_publisher(Image if c.message_type == "raw" else CompressedImage,
                                                   c.topic, qos_profile_sensor_data) for c in config.cameras}
        self.joints_pub = node.create_publisher(JointState, config.joint_states_topic, qos_profile_sensor_data)
        self.odom_pub = None
        if config.odom_topic:
            from nav_msgs.msg import Odometry

            self.odom_pub = node.create_publisher(Odometry, config.odom_topic, qos_profile_sensor_data)
        mid = {j: 0.5 * (l.lower + l.upper) for j, l in config.joint_limits.items()}
        self.positions = dict(mid)
        self.encoding = "rgb8"
        self.stamp_offset_s = 0.0

    def matched(self) -> bool:
        pubs = [*self.cams.values(), self.joints_pub] + ([self.odom_pub] if self.odom_pub else [])
        return all(p.get_subscription_count() > 0 for p in pubs)

    def publish(self, positions=None, names=None, cameras=True, joint_stamp_offset_s=0.0):
        """One observation, every input with the same stamp; cameras=False sends the joint
        states (and odometry) alone; joint_stamp_offset_s shifts the joint states' stamp."""
        import cv2
        from sensor_msgs.msg import CompressedImage, Image, JointState

        stamp = self.node.get_clock().now()
        stamp = (stamp.nanoseconds * 1e-9) + self.stamp_offset_s
        from ki_vla_ros.ros.conversions import s_to_time

        t = s_to_time(stamp)
        for camera in self.config.cameras if cameras else ():
            w, h = camera.width or 64, camera.height or 48
            rgb = np.full((h, w, 3), 90, np.uint8)
            rgb[h // 3: h // 2, w // 3: w // 2] = (200, 30, 30)
            if camera.message_type == "raw":
                channels = {"rgb8": 3, "bgr8": 3, "mono8": 1, "bgra8": 4, "rgba8": 4}.get(self.encoding, 2)
                msg = Image(height=h, width=w, encoding=self.encoding, step=w * channels)
                msg.data = np.zeros(h * w * channels, np.uint8).tobytes() if self.encoding != "rgb8" \
                    else rgb.tobytes()
            else:
                msg = CompressedImage(format="jpeg")
                msg.data = cv2.imencode(".jpg", rgb)[1].tobytes()
            msg.header.stamp = t
            self.cams[camera.name].publish(msg)
        values = self.positions if positions is None else positions
        names = list(values) if names is None else names
        js = JointState(name=names, position=[float(values[n]) for n in names])
        js.header.stamp = s_to_time(stamp + joint_stamp_offset_s)
        self.joints_pub.publish(js)
        if self.odom_pub is not None:
            from nav_msgs.msg import Odometry

            odom = Odometry()
            odom.header.stamp = t
            self.odom_pub.publish(odom)
        return stamp


def train_tiny_planner(config, task: str, subtask: str, steps: int = 80):
    """The tiny model for `config`, briefly trained (cross-entropy through the backbone) to
    answer `task` with `subtask` whatever the images: a real model and a real decode, just a
    small one. (Random tiny weights decode an empty subtask, which the planner ignores.)"""
    import torch

    from ki_vla_ros.model.inference import format_subtask_prompt, prepare_images
    from ki_vla_ros.model.network import TrainingBatch, batch_prompts
    from ki_vla_ros.runtime.model_loading import load_predictor

    predictor = load_predictor(config, "tiny")
    model, tok, c = predictor.model, predictor.model.text_tokenizer, predictor.config
    tokens, token_masks = batch_prompts(tok, [format_subtask_prompt(task)] * 4, c.max_token_len)
    target = torch.tensor([tok.encode(subtask, add_bos=False) + [tok.eos_id]] * 4)
    ones = torch.ones_like(target, dtype=torch.bool)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(steps):
        images = [[rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(c.num_cameras)] for _ in range(4)]
        pixels = torch.cat([prepare_images(i, c.num_cameras, c.image_size)[0] for i in images])
        batch = TrainingBatch(
            images=pixels, image_masks=torch.ones(4, c.num_cameras, dtype=torch.bool), tokens=tokens,
            token_masks=token_masks, target_tokens=target, target_masks=ones, target_loss_masks=ones,
            actions=torch.zeros(4, c.action_horizon, c.action_dim), has_actions=torch.zeros(4, dtype=torch.bool))
        loss = model.compute_loss(batch, recipe="ki")["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return predictor
