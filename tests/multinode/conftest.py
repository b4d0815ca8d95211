"""Names the multi-node tests import; the fixtures live in tests/conftest.py."""
from ..conftest import TINY, clean_env, read_jsonl, strip_times  # noqa: F401
