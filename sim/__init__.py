"""Bit-exact integer emulator of the engine (golden model) and the cycle-level performance model."""
