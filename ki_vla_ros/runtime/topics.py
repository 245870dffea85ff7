"""The graph's fixed topic names (robot topics come from the config). Every one can be
remapped with --ros-args -r; these are the defaults the nodes, the recorder and the
evaluator agree on."""

INSTRUCTION_TOPIC = "/ki_vla/instruction"  # std_msgs/String: the policy's prompt
TASK_TOPIC = "/ki_vla/task"  # std_msgs/String: the planner's high-level task
SUBTASK_TOPIC = "/ki_vla/subtask"  # ki_vla_ros/Subtask: the planner's output, the policy's prompt
ACTION_CHUNK_TOPIC = "/ki_vla/action_chunk"  # ki_vla_ros/ActionChunk
MODE_TOPIC = "/ki_vla/mux/mode"  # std_msgs/String, transient local: teleop | policy | hold
