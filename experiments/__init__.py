"""Research harness (not installed with the package): the KI paper's claims measured at small
scale on the simulated reach task, and the recipe of the shipped demo checkpoint.

    tasks               synthetic data: reach demonstrations ("move to the red block"), VQA,
                        captions, pointing and planner subtasks about the same scenes
    batches             TrainingBatch samplers over that data (actions + FAST targets; text)
    stages              how a stage (pretraining, VLA training, a DAgger round) runs the
                        package's one training loop, train.trainer.train
    vision_pretraining  the vision tower alone on where the block colours are (its own small
                        objective and head: the stand-in for SigLIP's pretraining)
    evaluation          action error, steps to a target error, VQA accuracy, closed-loop reach
                        in SimRobot (no ROS), also with the instruction changed part-way
    study               the claims study: six arms x seeds, four claims, table / JSON / plots
    demo_checkpoint     the shipped tiny demo checkpoint (ki_vla_ros/assets/demo_checkpoint)
    action_error_by_step  a checkpoint's held-out action error by the step a chunk starts at

Run from the repository root:

    python -m experiments ki-claims [--quick]          # docs/ki_claims.md
    python -m experiments make-demo-checkpoint DIR     # docs/demo_checkpoint.md
    python -m experiments.action_error_by_step CHECKPOINT
"""
