"""atheris harness: the http door (see targets.py for its contract). Run it with run.py:

    python benchmarks/fuzz/run.py http --seconds 60
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _atheris_main import main  # noqa: E402

if __name__ == "__main__":
    main("http")
