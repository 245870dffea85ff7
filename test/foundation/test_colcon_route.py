"""Route 2 of the README: `colcon build` in a ROS 2 workspace builds the messages, installs
the Python package, the node executables (lib/ki_vla_ros, for ros2 run / launch) and
launch/ + config/ (share/ki_vla_ros), and the result works without the source tree."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)


def _copy_tracked_files(destination: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)


def test_colcon_build_installs_a_working_ros_package(tmp_path):
    source = tmp_path / "src" / "ki_vla_ros"
    _copy_tracked_files(source)
    env = dict(os.environ, PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}",
               AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV))
    build = subprocess.run(
        [str(VENV / "bin" / "colcon"), "build", "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}",
         "-DBUILD_TESTING=OFF"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

    prefix = tmp_path / "install" / "ki_vla_ros"
    for node in ("policy_node", "planner_node", "command_mux", "sim_robot"):
        assert os.access(prefix / "lib" / "ki_vla_ros" / node, os.X_OK), node
    share = prefix / "share" / "ki_vla_ros"
    assert sorted(p.name for p in (share / "launch").iterdir()) == sorted(p.name for p in (REPO / "launch").iterdir())
    assert sorted(p.name for p in (share / "config").iterdir()) == sorted(p.name for p in (REPO / "config").iterdir())

    # Import from the install space only: no source tree, no editable install on sys.path.
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    check = (
        "import sys\n"
        # the repo root (editable install) goes; the venv's site-packages may live inside it
        f"sys.path = [p for p in sys.path if not p.startswith({str(REPO)!r}) or p.startswith(sys.prefix)]\n"
        "import ki_vla_ros\n"
        f"assert ki_vla_ros.__path__[0].startswith({str(site)!r}), ki_vla_ros.__path__\n"
        "from ki_vla_ros.msg import ActionChunk, Subtask\n"
        "from ki_vla_ros.ros.graph_spec import graph_nodes\n"
        "from ament_index_python.packages import get_package_share_directory\n"
        "print(get_package_share_directory('ki_vla_ros'))\n"
        "print(len(graph_nodes('mobile', sim=True)))\n")
    run_env = dict(os.environ, PYTHONPATH=str(site), AMENT_PREFIX_PATH=f"{prefix}{os.pathsep}{VENV}")
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=run_env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [str(share), "3"]
