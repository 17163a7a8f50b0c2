"""Tests of the RTL: harness, interfaces, control slave, AXI master, emission, packaging."""
