"""README's parameter reference lists every config key the nodes read, and no key they do not.

The table is the user's reference for the YAML; a key added to runtime/config.py without a row
(or a row left behind after a key is removed) fails here."""

import dataclasses
import re
from pathlib import Path

from ki_vla_ros.runtime import config as cfg

README = Path(__file__).resolve().parents[2] / "README.md"

# (block, dataclass, key prefix): the nested dataclasses appear as prefixed keys.
NESTED = {
    ("/**", "joint_limits"): (cfg.JointLimits, "joint_limits.<joint>."),
    ("/**", "cameras"): (cfg.CameraConfig, "cameras.<name>."),
    ("/**", "action_groups"): (cfg.ActionGroupConfig, "action_groups.<name>."),
    ("policy_node", "chunk"): (cfg.ChunkConfig, "chunk."),
    ("policy_node", "sync"): (cfg.SyncConfig, "sync."),
    ("policy_node", "model"): (cfg.ModelConfig, "model."),
}


def config_keys() -> set[tuple[str, str]]:
    keys = set()
    for block, schema in cfg.NODE_BLOCKS.items():
        for field in dataclasses.fields(schema):
            nested = NESTED.get((block, field.name))
            if nested is None:
                keys.add((block, field.name))
                continue
            inner, prefix = nested
            keys |= {(block, prefix + f.name) for f in dataclasses.fields(inner) if f.name != "name"}
    return keys


def readme_keys() -> set[tuple[str, str]]:
    section = README.read_text().split("## Parameter reference", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", section, flags=re.MULTILINE))


def test_readme_parameter_table_lists_exactly_the_config_keys():
    documented, actual = readme_keys(), config_keys()
    assert documented - actual == set(), f"README documents keys the config does not have: {documented - actual}"
    assert actual - documented == set(), f"config keys missing from README's parameter reference: {actual - documented}"
