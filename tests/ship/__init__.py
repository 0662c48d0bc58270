"""The PostgreSQL sink's tests: a package, so that its conftest is ``ship.conftest`` and does not
shadow ``tests/conftest.py``, which other test modules import from as ``conftest``."""
