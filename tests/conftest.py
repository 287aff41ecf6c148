import sys
from pathlib import Path

# Test helper modules (e.g. linear_gaussian.py) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
