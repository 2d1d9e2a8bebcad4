import sys
from pathlib import Path

# The tests import the miniature job that they also run as a subprocess.
sys.path.insert(0, str(Path(__file__).parent))
