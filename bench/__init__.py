"""`make bench` (`python -m bench.run`): speed and memory figures; see bench/run.py."""
