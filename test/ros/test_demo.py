"""`ki-vla demo` (the main job, `make demo`) end to end as separate processes over DDS: it
succeeds on the single-arm config and its summary carries the mux's view (holds, time held);
with a planner that publishes nothing (random tiny weights, mobile) it fails and says why."""
from __future__ import annotations

import json
import subprocess
import sys


def _demo(ros_env, ros_domain_id, tmp_path, *args):
    summary = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, "-m", "ki_vla_ros.cli", "demo", "--duration", "8",
                           "--domain-id", str(ros_domain_id), "--summary-json", str(summary), *args],
                          env=ros_env, capture_output=True, text=True, timeout=400)
    return proc, json.loads(summary.read_text()) if summary.exists() else None


def test_the_single_arm_demo_succeeds_and_reports_the_mux_holds(ros_env, ros_domain_id, tmp_path):
    proc, summary = _demo(ros_env, ros_domain_id, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert summary["chunks_published"] > 0 and summary["commands_published"] > 0
    assert summary["modes_seen"] == ["policy", "teleop", "policy"]
    assert summary["mux_holds_sent"] >= 1 and summary["mux_holding_s"] > 0  # the switches hold
    assert summary["mux_timeouts"] is not None
    assert summary["handoff_max_step_rad"] <= summary["max_step_rad_allowed"] + 1e-9
    assert set(summary["node_exit_codes"].values()) == {0}, summary["node_exit_codes"]


def test_the_mobile_demo_fails_when_its_planner_publishes_no_subtask(ros_env, ros_domain_id, tmp_path):
    proc, summary = _demo(ros_env, ros_domain_id, tmp_path, "--config", "mobile", "--checkpoint", "tiny")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "the planner is enabled but published no subtask" in proc.stdout, proc.stdout[-3000:]
    assert summary["subtasks_seen"] == [] and summary["chunks_published"] > 0
