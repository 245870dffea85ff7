"""command_mux: teleop and policy commands in, one command stream per controller out.

Modes teleop / policy / hold (runtime.mux.CommandMux has the rules: timeouts, bumpless
hand-off, holds). Switch with the std_srvs/Trigger services

    ~/teleop   ~/policy   ~/hold

The current mode is on /ki_vla/mux/mode (std_msgs/String, transient local: a late
subscriber gets the latest mode). Inputs per action group: its teleop_topic and
policy_topic; output: its controller_topic (JointTrajectory, or for a base group TwistStamped or
Twist as its twist_type says).
"""

from __future__ import annotations

import sys

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from ki_vla_ros.ros import conversions as conv
from ki_vla_ros.ros import parameters as params
from ki_vla_ros.ros.dds import LATCHED_QOS
from ki_vla_ros.runtime.chunking import chunk_period_warning
from ki_vla_ros.runtime.commands import JointTrajectoryCommand, TwistCommand
from ki_vla_ros.runtime.config import load_robot_config
from ki_vla_ros.runtime.mux import CommandMux, CommandSource, MuxMode
from ki_vla_ros.runtime.topics import MODE_TOPIC

# How long a stopping mux waits for the controllers to acknowledge its hold commands.
EXIT_ACK_TIMEOUT_S = 1.0


class CommandMuxNode(Node):
    def __init__(self, node_name: str = "command_mux", *, context=None, **node_kwargs):
        super().__init__(node_name, context=context, **node_kwargs)
        self.declare_parameter("config", "single_arm", params.CONFIG)
        # timeouts and limits as typed parameters; a change applies to the next command
        self.config = params.declare_config_parameters(
            self, "command_mux", load_robot_config(self.get_parameter("config").value), read_only=("initial_mode",),
            apply=self._apply)
        self.mux = CommandMux(self.config)
        self.outputs = {}
        for group in self.config.action_groups:
            if group.kind == "joint_trajectory":
                self.outputs[group.name] = self.create_publisher(JointTrajectory, group.controller_topic, 10)
                for source, topic in ((CommandSource.TELEOP, group.teleop_topic),
                                      (CommandSource.POLICY, group.policy_topic)):
                    self.create_subscription(
                        JointTrajectory, topic,
                        lambda msg, g=group.name, s=source: self._on_command(
                            s, conv.joint_trajectory_from_msg(msg, g)), 10)
            else:
                self.outputs[group.name] = self.create_publisher(conv.twist_type(group), group.controller_topic, 10)
                for source, topic in ((CommandSource.TELEOP, group.teleop_topic),
                                      (CommandSource.POLICY, group.policy_topic)):
                    self.create_subscription(
                        conv.twist_type(group), topic,
                        lambda msg, g=group.name, s=source: self._on_command(
                            s, TwistCommand(g, self.now_s(), *conv.twist_values(msg))), 10)
        self.create_subscription(JointState, self.config.joint_states_topic, self._on_joint_state,
                                 qos_profile_sensor_data)
        self.mode_pub = self.create_publisher(String, MODE_TOPIC, LATCHED_QOS)
        for mode in MuxMode:
            self.create_service(Trigger, f"~/{mode.value}",
                                lambda request, response, m=mode: self._on_switch(m, response))
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0 / self.config.control_rate_hz, self._tick)
        self.create_timer(1.0, self._publish_diagnostics)
        self._publish_mode()
        warning = chunk_period_warning(self.config)
        if warning:
            self.get_logger().warning(warning)
        self.get_logger().info(f"mode {self.mux.mode.value}; groups "
                               f"{[g.name for g in self.config.action_groups]}")

    def _apply(self, config) -> None:
        """A changed mux parameter (ros.parameters checked it): the new limits from now on."""
        self.config = config
        self.mux.config = config.mux
        warning = chunk_period_warning(config)
        if warning:
            self.get_logger().warning(warning)

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_joint_state(self, msg: JointState) -> None:
        if len(msg.position) != len(msg.name):
            return
        self.mux.on_joint_state(msg.name, msg.position, conv.time_to_s(msg.header.stamp),
                                msg.velocity if len(msg.velocity) == len(msg.name) else ())

    def _on_command(self, source: CommandSource, command) -> None:
        decision = self.mux.on_command(source, command, self.now_s())
        if decision.forwarded:
            self._publish(decision.command)
        elif decision.reason and decision.disposition.value == "dropped":
            self.get_logger().warning(decision.reason, throttle_duration_sec=2.0)

    def _publish(self, command) -> None:
        if isinstance(command, JointTrajectoryCommand):
            self.outputs[command.group].publish(conv.joint_trajectory_msg(command))
        else:
            self.outputs[command.group].publish(
                conv.twist_msg(command, self.config.action_group(command.group).stamped))

    def _tick(self) -> None:
        for hold in self.mux.tick(self.now_s()):
            self.get_logger().info(f"hold '{hold.group}': {hold.reason}", throttle_duration_sec=2.0)
            self._publish(hold.command)

    def prepare_to_exit(self) -> None:
        """On a stop request (node_main calls this while the context is valid): switch to hold,
        send every group that was moving a hold at its measured position, and wait until the
        controllers have acknowledged it, so that the robot holds before this process exits
        instead of running out the last trajectory."""
        now_s = self.now_s()
        self.mux.switch(MuxMode.HOLD, now_s)
        holds = self.mux.tick(now_s)
        for hold in holds:
            self.get_logger().info(f"stopping: hold '{hold.group}': {hold.reason}")
            self._publish(hold.command)
        self._publish_mode()
        for publisher in self.outputs.values():
            publisher.wait_for_all_acked(Duration(seconds=EXIT_ACK_TIMEOUT_S))

    def _on_switch(self, mode: MuxMode, response: Trigger.Response) -> Trigger.Response:
        response.success, response.message = self.mux.switch(mode, self.now_s())
        self.get_logger().info(f"switch to {mode.value}: {response.message}")
        self._publish_mode()
        return response

    def _publish_mode(self) -> None:
        self.mode_pub.publish(String(data=self.mux.mode.value))

    def _publish_diagnostics(self) -> None:
        status = self.mux.status(self.now_s())
        diag = DiagnosticStatus(name=f"{self.get_name()}: mux", hardware_id=self.config.name)
        holding = [g for g in status.groups if g.holding]
        diag.level = DiagnosticStatus.OK if not holding or status.mode is MuxMode.HOLD else DiagnosticStatus.WARN
        diag.message = f"mode {status.mode.value}" + (
            f"; holding {', '.join(g.group for g in holding)}: {holding[0].reason}" if holding else "")
        values = {"mode": status.mode.value,
                  **{k: getattr(status.counters, k) for k in status.counters.__dataclass_fields__},
                  "holding_s": f"{max((g.holding_s for g in status.groups), default=0.0):.2f}",
                  **{f"holding_s.{g.group}": f"{g.holding_s:.2f}" for g in status.groups}}
        diag.values = conv.key_values(values)
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [diag]
        self.diagnostics_pub.publish(msg)


def main(args=None) -> None:
    from ki_vla_ros.ros.node_main import run_nodes

    run_nodes(args, build=lambda argv: [CommandMuxNode()])


if __name__ == "__main__":
    main(sys.argv)
