"""Amaranth RTL of the reconfigurable compute engine, its interfaces and Verilog emission."""
