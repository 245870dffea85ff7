"""Shared fixtures: every test that touches ROS gets its own DDS domain on loopback.

A test run picks a random base domain id (or KI_VLA_TEST_DOMAIN_BASE) and hands out a new
id per test, so a node left over from one test can never answer another, and two test runs
on one machine rarely collide. Discovery is restricted to localhost everywhere.
"""
from __future__ import annotations

import itertools
import os
import random
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Helper modules shared by the test folders (config_files.py) import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))
# The research harness (experiments/, not installed with the package) imports from the repository root.
sys.path.insert(1, str(REPO_ROOT))

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# One torch thread per process: tests start several processes (nodes, DDP ranks) on a
# 2-core machine, and oversubscribed OpenMP threads make tiny models many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
# The same DDS transports as `ki-vla bringup` (shared memory large enough for camera images).
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO_ROOT / "config" / "fastdds_localhost.xml"))
# ament_index_python needs the install prefix; in the venv route that is the venv itself.
os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)

# Fast DDS derives ports from the domain id; 1..100 keeps well inside the valid range.
_BASE = int(os.environ.get("KI_VLA_TEST_DOMAIN_BASE", random.randint(1, 60)))
_DOMAINS = itertools.cycle(range(_BASE, _BASE + 40))


@pytest.fixture
def ros_domain_id() -> int:
    """A DDS domain id used by this test only (within this run)."""
    return next(_DOMAINS)


@pytest.fixture
def ros_env(ros_domain_id) -> dict:
    """Environment for child processes: this test's domain, loopback discovery, the repo importable."""
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(ros_domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def rclpy_context(ros_domain_id):
    """An initialized rclpy Context on this test's domain; shut down afterwards."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    yield context
    context.try_shutdown()
