"""ROS-free control logic, shared by the live nodes and the offline replay evaluator.

    config        the embodiment YAML (ROS parameter-file layout) -> RobotConfig
    sync          approximate-time synchronizer over header stamps, with a maximum age
    observation   image decoding, camera slots, joint order -> Observation
    policy        Policy facade over a predictor: Observation -> ActionChunk with timings
    action_chunk  the ActionChunk handed from policy to execution
    chunking      latency compensation, blending, when to request the next chunk
    safety        limits from config; NaN/inf -> hold
    commands      trajectory -> per-group JointTrajectory / Twist commands
    policy_loop   all of the above in order: messages in, commands out (node and replay)
    mux           teleop / policy / hold command multiplexer with bumpless hand-off
    subtask_filter  planner hysteresis: a changed subtask must repeat before it is used
    joint_state_cache  merge JointState messages by joint name, with ages
    model_loading  load the predictor a config names (torch imported only then)

Nothing here imports rclpy or torch: times are float seconds, images numpy arrays.
"""
