"""Engine geometries the RTL tests are built at (small, so simulator builds stay short)."""

from __future__ import annotations

from llmfab.compiler.isa import Buffer
from llmfab.rtl.engine.buffers import BufferGeometry
from llmfab.rtl.engine.geometry import EngineGeometry

# 8-byte words (2 ACT32 lanes), a few KiB per buffer
TINY = EngineGeometry(BufferGeometry(8, {Buffer.WGT: 512, Buffer.ACT: 512, Buffer.KV: 256, Buffer.OUT: 128}),
                      sfu_lanes=2, hbm_ports=2, axi_data_width=64, axi_burst_len=16)

# 32-byte words (8 ACT32 lanes, a 256-bit AXI beat), 8 KiB in WGT and ACT
WIDE32 = EngineGeometry(BufferGeometry(32, {Buffer.WGT: 256, Buffer.ACT: 256, Buffer.KV: 64, Buffer.OUT: 32}),
                        sfu_lanes=8, hbm_ports=2, axi_data_width=256, axi_burst_len=16)

# 32-byte words (8 ACT32 lanes), 8 KiB per buffer: spans shorter and longer than a word, heads
# that end inside a beat
WIDE32 = EngineGeometry(BufferGeometry(32, {Buffer.WGT: 256, Buffer.ACT: 256, Buffer.KV: 256, Buffer.OUT: 64}),
                        sfu_lanes=8, hbm_ports=2, axi_data_width=256, axi_burst_len=16)
