"""The package share directory (package.xml, launch/, config/) resolves through ament_index."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_share_directory_holds_package_xml_launch_and_config():
    from ament_index_python.packages import get_package_share_directory

    share = Path(get_package_share_directory("ki_vla_ros"))
    assert (share / "package.xml").is_file()
    assert (share / "package.xml").read_text() == (REPO_ROOT / "package.xml").read_text()
    for sub in ("launch", "config"):
        assert (share / sub).is_dir(), f"{share / sub} missing"
        installed = sorted(p.name for p in (share / sub).iterdir())
        source = sorted(p.name for p in (REPO_ROOT / sub).iterdir())
        assert installed == source, f"{sub}/ in the share directory is out of date"


def test_generated_messages_import_next_to_the_source_package():
    import ki_vla_ros
    from ki_vla_ros.msg import ActionChunk, Subtask

    assert ActionChunk.__module__.startswith("ki_vla_ros.msg")
    assert Subtask.get_fields_and_field_types()["sequence"] == "uint64"
    assert Path(ki_vla_ros.__file__).exists()
