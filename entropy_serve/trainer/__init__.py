"""What produces what the server serves: the difficulty probe (probe.py)."""
