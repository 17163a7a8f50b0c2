"""Datapath units of the engine in Amaranth, bit-exact with `llmfab.sim.numerics`.

One module per concept: `arith` (combinational fixed-point primitives), `pipeline` (register
stages with stream back-pressure), and the units. Every unit documents its latency, throughput
and DSP48E2 count; docs/rtl_units.md collects them.
"""
