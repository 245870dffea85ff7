"""`python -m experiments ki-claims` and `python -m experiments make-demo-checkpoint DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ki_vla_ros.model.config import TEXT_TOKENIZERS

# Scenes (one frame each) the demo checkpoint's VLM data is about; here so the CLI needs no torch.
DEMO_VLM_SCENES = 3000


def on_off(text: str) -> bool:
    """argparse type of a yes/no setting: "on" or "off"."""
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected on or off")
    return text == "on"


def format_option(flag: str, value) -> str:
    """flag and value as the command line spells them (the inverse of the option's type)."""
    if isinstance(value, bool):
        return f"{flag} {'on' if value else 'off'}"
    return f"{flag} {value}" if isinstance(value, str) else f"{flag} {value:g}"


# StudySize fields that make-demo-checkpoint sets from the command line: flag, type, help.
# Each defaults to the shipped recipe's value (DEMO_SIZE).
SIZE_OPTIONS = {
    "batch_size": ("--batch-size", int, "batch size"),
    "train_episodes": ("--train-episodes", int, "demonstration episodes"),
    "pretrain_steps": ("--pretrain-steps", int, "mixed VLM pretraining steps"),
    "vision_pretrain_steps": ("--vision-pretrain-steps", int,
                              "steps that first train the vision tower alone on the block colours (and positions) "
                              "in each image patch; 0: none"),
    "vision_lr_scale": ("--vision-lr-scale", float,
                        "the vision tower's learning rate as a fraction of the rest's; 0: frozen after its "
                        "pretraining (at the full rate its features collapse)"),
    "where_weight": ("--where-weight", float, "weight of the patch-position loss in the vision tower's "
                                              "pretraining; 0: colours only"),
    "point_pretrain_steps": ("--point-pretrain-steps", int,
                             "VLM steps on pointing questions alone before the mixed VLM pretraining; 0: none"),
    "text_tokenizer": ("--text-tokenizer", str, "byte, or sentencepiece: a word-level model fitted on the "
                                                "training text"),
    "demo_action_noise_rad": ("--demo-action-noise-rad", float,
                              "noise (rad, std) added to the executed actions of the training demonstrations, "
                              "which the expert's labels then correct; 0: clean"),
    "first_step_fraction": ("--first-step-fraction", float,
                            "share of VLA action samples that start at step 0, where only the image and the "
                            "instruction say where to go; 0: uniform over steps"),
    "delta_actions": ("--delta-actions", on_off, "on: joint actions as offsets from the chunk's start state; "
                                                 "off: absolute joint targets"),
}

# DaggerSettings fields (demo_checkpoint.py), the same way: flag, type, help.
DAGGER_OPTIONS = {
    "rounds": ("--dagger-rounds", int, "DAgger rounds after the KI stage: the model drives, the expert relabels; "
                                       "0: none"),
    "steps": ("--dagger-steps", int, "training steps per DAgger round"),
    "lr_scale": ("--dagger-lr-scale", float, "a DAgger round's learning rate as a fraction of the VLA stage's"),
    "max_lead_steps": ("--dagger-max-lead-steps", int,
                       "the model drives each DAgger episode for a random 0..this many steps before the expert "
                       "takes over"),
}


def add_subcommands(subparsers) -> None:
    claims = subparsers.add_parser("ki-claims", help="the KI paper's four claims measured at small scale (CPU): "
                                                     "default about 45 min on 2 cores, --quick about 6")
    claims.add_argument("--quick", action="store_true", help="the few-minute size (same as --size quick)")
    claims.add_argument("--size", choices=("quick", "default", "long"), default="default")
    claims.add_argument("--out", default="ki_claims_out", help="directory for ki_claims.json, .txt and plots")
    claims.add_argument("--robot", default="single_arm")
    claims.add_argument("--arms", default=None,
                        help="comma-separated arms to train (default: all of ki,joint,pi0,fast,ki-noco,joint-noco)")
    claims.set_defaults(func=lambda a: run_claims("quick" if a.quick else a.size, Path(a.out), robot=a.robot,
                                                  arms=a.arms))

    demo = subparsers.add_parser("make-demo-checkpoint",
                                 help="train the tiny demo checkpoint into OUT")
    demo.add_argument("out", help="output directory (required: the shipped asset ki_vla_ros/assets/demo_checkpoint "
                                  "is only replaced when named explicitly)")
    demo.add_argument("--robot", default="single_arm")
    add_demo_checkpoint_options(demo)
    demo.set_defaults(func=lambda a: run_make_demo_checkpoint(Path(a.out), robot=a.robot,
                                                              **demo_checkpoint_kwargs(a)))


def add_demo_checkpoint_options(parser) -> None:
    """Options of the demo-checkpoint recipe (`python -m experiments make-demo-checkpoint`)."""
    parser.add_argument("--steps", type=int, default=None, help="VLA training steps (default: the shipped recipe's)")
    parser.add_argument("--time-budget-s", type=float, default=None,
                        help="instead of --steps: as many VLA steps as fit in this many seconds")
    parser.add_argument("--device", default="cpu", help="where to train: cpu (default) or cuda")
    parser.add_argument("--recipe", default="ki", choices=("ki", "joint", "pi0"),
                        help="VLA recipe (default ki; the demo needs the flow expert, so not fast)")
    parser.add_argument("--vlm-scenes", type=int, default=DEMO_VLM_SCENES,
                        help=f"scenes (one frame each) for the VLM questions (default {DEMO_VLM_SCENES}; "
                             "0: the demonstrations')")
    parser.add_argument("--point-questions", action=argparse.BooleanOptionalAction, default=True,
                        help="'point to the <block>' -> 'column C row R' in the mixed VLM pretraining and the "
                             "co-training (default: on)")
    for field, (flag, kind, text) in SIZE_OPTIONS.items():
        choices = TEXT_TOKENIZERS if field == "text_tokenizer" else None
        parser.add_argument(flag, type=kind, default=None, choices=choices, help=f"{text} (default: the recipe's)")
    for flag, kind, text in DAGGER_OPTIONS.values():
        parser.add_argument(flag, type=kind, default=None, help=f"{text} (default: the recipe's)")
    parser.add_argument("--dagger-from", default=None, metavar="CHECKPOINT",
                        help="skip the stages before DAgger and run only its rounds, from this checkpoint")
    parser.add_argument("--snapshot-dir", default=None,
                        help="also save the model there every 500 steps, and after each DAgger round")
    parser.add_argument("--model", action="append", default=[], metavar="FIELD=INT",
                        help="change a field of the tiny study model, e.g. --model image_size=64 (repeatable)")


def demo_checkpoint_kwargs(args) -> dict:
    overrides = {}
    for item in args.model:
        field, sep, value = item.partition("=")
        if not sep or not value.lstrip("-").isdigit():
            raise SystemExit(f"--model {item!r}: expected FIELD=INTEGER, e.g. image_size=64")
        overrides[field] = int(value)
    size, dagger = _given(args, SIZE_OPTIONS), _given(args, DAGGER_OPTIONS)
    return {"steps": args.steps, "time_budget_s": args.time_budget_s, "device": args.device, "recipe": args.recipe,
            "snapshot_dir": args.snapshot_dir, "vlm_scenes": args.vlm_scenes,
            "point_questions": args.point_questions,
            "size_overrides": size, "model_overrides": overrides, "dagger_overrides": dagger,
            "dagger_from": args.dagger_from}


def _given(args, options: dict) -> dict:
    """{field: value} of the options table's flags given on the command line."""
    values = {field: getattr(args, flag[2:].replace("-", "_")) for field, (flag, _, _) in options.items()}
    return {field: value for field, value in values.items() if value is not None}


def changed_flags(settings, defaults, options: dict) -> list[str]:
    """The options table's flags for the fields where settings differ from defaults."""
    return [format_option(flag, getattr(settings, field)) for field, (flag, _, _) in options.items()
            if getattr(settings, field) != getattr(defaults, field)]


def run_claims(size: str, out_dir: Path, robot: str = "single_arm", arms: str | None = None) -> int:
    from experiments.study import ARMS, format_table, run_study, write_outputs

    results = run_study(size, robot=robot, arms=tuple(arms.split(",")) if arms else tuple(ARMS))
    table = format_table(results)
    print(table)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ki_claims.txt").write_text(table + "\n")
    for path in write_outputs(results, out_dir):
        print(f"[ki-claims] wrote {path}")
    return 0


def run_make_demo_checkpoint(out_dir: Path, robot: str = "single_arm", steps: int | None = None,
                             size_overrides: dict | None = None, dagger_overrides: dict | None = None,
                             **kwargs) -> int:
    import dataclasses

    from experiments.demo_checkpoint import DEMO_DAGGER, DEMO_SIZE, make_demo_checkpoint

    size = dataclasses.replace(DEMO_SIZE, **(size_overrides or {}))
    dagger = dataclasses.replace(DEMO_DAGGER, **(dagger_overrides or {}))
    report = make_demo_checkpoint(out_dir, robot=robot, steps=steps, size=size,
                                  dagger_settings=dagger, **kwargs)
    print(report)
    return 0
