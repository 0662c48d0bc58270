"""Synthetic OpenCode legacy JSON storage trees for tests, benchmarks and the demo.

Files are written as opencode 1.0.x-1.1.x writes them (``JSON.stringify(obj, null, 2)`` bytes in
zod key order, real ID formats, in place); the bytes depend only on the seed and the parameters.
The same records can go into an ``opencode.db`` as opencode >= 1.2 stores them (``generate_db``,
``LiveDbWriter``).
"""

from indexer_service.demo.synthetic.files import _write, age_tree
from indexer_service.demo.synthetic.live import LiveWriter
from indexer_service.demo.synthetic.malformed import Malformed, add_noise, corrupt, corrupt_random
from indexer_service.demo.synthetic.opencode_db import SqliteSink, generate_db
from indexer_service.demo.synthetic.opencode_live import LiveDbWriter
from indexer_service.demo.synthetic.opencode_schema import OPENCODE_SCHEMA, SECRET_MARKERS
from indexer_service.demo.synthetic.spec import DEFAULT_BASE_TIME_MS, TreeSpec, TreeSummary
from indexer_service.demo.synthetic.tree import generate_tree

__all__ = [
    "DEFAULT_BASE_TIME_MS",
    "OPENCODE_SCHEMA",
    "SECRET_MARKERS",
    "LiveDbWriter",
    "LiveWriter",
    "Malformed",
    "SqliteSink",
    "TreeSpec",
    "TreeSummary",
    "_write",
    "add_noise",
    "age_tree",
    "corrupt",
    "corrupt_random",
    "generate_db",
    "generate_tree",
]
