"""Test suite; mirrors the source layout."""
