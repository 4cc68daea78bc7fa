"""cachesync's benchmark suite (``scripts/bench`` / ``python -m bench``); never part of the tests."""
