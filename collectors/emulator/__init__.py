"""Exchange emulator internals; the public face is collectors/replay.py."""
