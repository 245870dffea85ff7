"""The KI paper's claims, reproduced at small scale on the simulated reach task.

    tasks        synthetic data: reach demonstrations ("move to the red block"), VQA and
                 captions about the same scenes, planner subtask targets
    batches      TrainingBatch samplers over that data (actions + FAST targets; text targets)
    fitting      the optimisation loop used by every stage (AdamW, warm-up + cosine, clipping)
    evaluation   action error, steps to a target error, VQA accuracy, closed-loop success in
                 SimRobot (no ROS), flow vs autoregressive FAST latency
    study        the whole experiment: VLM pretraining, per-recipe VLA training over seeds,
                 evaluation, table / JSON / plots
    demo_checkpoint  the shipped tiny demo checkpoint (ki_vla_ros/assets/demo_checkpoint)

Entry points: `python benchmarks/ki_claims.py` and `ki-vla ki-claims` / `ki-vla make-demo-checkpoint`.
"""
