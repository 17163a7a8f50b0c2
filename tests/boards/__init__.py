"""Tests for board data and the hardware config."""
