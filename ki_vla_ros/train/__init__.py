"""Training with the knowledge-insulation recipe.

    dataset      the on-disk dataset format, norm stats, FAST fitting
    sim_data     synthetic reach demonstrations + VQA from ki_vla_ros.sim
    convert      rosbags -> dataset (through the evaluator's replay)
    batching     dataset -> TrainingBatch with the inference preprocessing; VLM samples
    schedule     warm-up + cosine learning rate
    trainer      the loop: recipes, clipping, autocast, checkpoints, exact resume
    distributed  torchrun / DDP sharding of the global batch
    prepare      build model, stats, tokenizers and samplers for a run
    commands     the convert, make-sim-dataset and train subcommands
"""
