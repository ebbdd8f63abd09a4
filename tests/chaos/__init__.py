"""Chaos testing: brokers killed, frozen, added and removed, and a slow, failing object store, while
producers and consumers keep going; a checker then decides whether any acknowledged record was lost.

``tests/`` is put on ``sys.path`` (where pytest puts it) so that ``python -m tests.chaos.run`` and
pytest import the helpers under the same names.
"""

import sys
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
