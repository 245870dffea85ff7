"""Helpers of the evaluation tests (episode_bags.py) import as plain modules."""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
