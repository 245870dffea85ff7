"""ROS-free control logic, shared by the live nodes and the offline replay evaluator.

    config        the embodiment YAML (ROS parameter-file layout) -> RobotConfig
    sync          approximate-time synchronizer over header stamps, with a maximum age
    observation   image decoding, camera slots, joint order -> Observation
    policy        Policy facade over a predictor: Observation -> ActionChunk with timings
    action_chunk  the ActionChunk handed from policy to execution
    chunking      latency compensation, blending, when to request the next chunk
    safety        limits from config; NaN/inf -> hold
    commands      trajectory -> per-group JointTrajectory / Twist commands

Nothing here imports rclpy or torch: times are float seconds, images numpy arrays.
"""
