"""One port's DMA on the engine's buffers, with a backdoor buffer port pair for the test."""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from llmfab.rtl.axi_master import TransferCommand
from llmfab.rtl.engine.buffers import EngineBuffers, read_port_signature, write_port_signature
from llmfab.rtl.engine.dma import PortDma, RowRequest
from llmfab.rtl.interfaces import AXI4Signature


class DmaBench(wiring.Component):
    """Ports: `axi`, `load_req`, `store_req`, `fetch_cmd`, `fetch_data`, `load_done`, `store_done`,
    `write_idle`, `fault`, and the backdoor `bd_read` / `bd_write` buffer ports."""

    def __init__(self, geometry, data_width: int, max_burst: int):
        self.geometry, self.data_width, self.max_burst = geometry, data_width, max_burst
        g = geometry.buffers
        super().__init__({
            "axi": Out(AXI4Signature(data_width)),
            "load_req": In(stream.Signature(RowRequest)), "store_req": In(stream.Signature(RowRequest)),
            "fetch_cmd": In(stream.Signature(TransferCommand)), "fetch_data": Out(stream.Signature(data_width)),
            "load_done": Out(1), "store_done": Out(1), "write_idle": Out(1), "fault": Out(1),
            "bd_read": In(read_port_signature(g)), "bd_write": In(write_port_signature(g)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffers = buffers = EngineBuffers(self.geometry.buffers, reads=2, writes=2)
        m.submodules.dma = dma = PortDma(self.geometry.buffers, self.data_width, self.max_burst, fetch=True)
        wiring.connect(m, wiring.flipped(self.axi), dma.axi)
        for name in ("load_req", "store_req", "fetch_cmd"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(dma, name))
        wiring.connect(m, dma.fetch_data, wiring.flipped(self.fetch_data))
        wiring.connect(m, dma.wport, buffers.write[0])
        wiring.connect(m, dma.rport, buffers.read[0])
        wiring.connect(m, wiring.flipped(self.bd_read), buffers.read[1])
        wiring.connect(m, wiring.flipped(self.bd_write), buffers.write[1])
        m.d.comb += [self.load_done.eq(dma.load_done), self.store_done.eq(dma.store_done),
                     self.write_idle.eq(dma.write_idle), self.fault.eq(buffers.fault)]
        return m
