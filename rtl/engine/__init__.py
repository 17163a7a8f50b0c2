"""The compute engine in Amaranth: instruction issue, buffers, DMA and the opcode sequencers."""
