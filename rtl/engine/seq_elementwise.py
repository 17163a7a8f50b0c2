"""ADD and SILU_MUL: elementwise ACT32 opcodes over `rows x cols` (docs/isa.md).

Both read `src0` and `src1` (ACT32 `[rows, cols]`, rows back to back) in lock-step, one word of
`sfu_lanes` elements per cycle from each, pass them through a lane unit and write `dst`:

- ADD: `sat32(a + b)` (rtl/units/elementwise.ResidualAddUnit, numerics `residual_add`);
- SILU_MUL: `multiply(silu(gate), up)` (SiLU then the Q.16 product, `SiluMulUnit`).

Cycles from `start` to `done` for `n = rows · cols` elements and L lanes, with both sources
word-aligned: `ceil(n / L) + LATENCY + 6` (`cycles`); the 6 are the command cycle, the port
read, the reader's FIFO and packer, the writer's packer and the done cycle.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring

from llmfab.compiler.isa import Opcode
from llmfab.rtl.units.arith import round_shift, saturate
from llmfab.rtl.units.elementwise import ResidualAddUnit
from llmfab.rtl.units.pipeline import LaneUnit
from llmfab.rtl.units.sigmoid import sigmoid_stages
from llmfab.sim.fixed_point import ACT32

from .bytestream import LENGTH_BITS, ByteWriter, WordReader
from .lanes import act32_lane_pipeline
from .sequencer import Sequencer

FIXED_CYCLES = 6


class SiluMulUnit(LaneUnit):
    """`lanes` of `multiply(silu(a), b)` per cycle (numerics §9, §10): SiLU's 17 stages with `b`
    carried, then the product's 3."""

    LATENCY = 20

    def input_fields(self):
        return {"a": signed(ACT32.bits), "b": signed(ACT32.bits)}

    def output_fields(self):
        return {"y": signed(ACT32.bits)}

    def datapath(self, lane, inputs):
        sig, carried = sigmoid_stages(lane, inputs.a, {"b": inputs.b})
        s16, carried = lane.carry(carried, value=sig.x * sig.p)
        s17, carried = lane.carry(carried, silu=round_shift(s16.value, ACT32.frac)[:ACT32.bits].as_signed())
        p1 = lane.stage(product=s17.silu * carried["b"])
        p2 = lane.stage(product=p1.product)
        return {"y": lane.stage(y=saturate(round_shift(p2.product, ACT32.frac), ACT32.bits)).y}


UNITS = {Opcode.ADD: ResidualAddUnit, Opcode.SILU_MUL: SiluMulUnit}


class ElementwiseSequencer(Sequencer):
    """Executes one of ADD or SILU_MUL (chosen when built: `opcode`)."""

    OPCODES = tuple(UNITS)

    def __init__(self, geometry, opcode: Opcode):
        self.opcode = Opcode(opcode)
        self.unit_class = UNITS[self.opcode]
        super().__init__(geometry)

    @classmethod
    def cycles(cls, opcode: Opcode, elements: int, lanes: int) -> int:
        """Cycles from start to done (word-aligned operands, no back-pressure)."""
        return -(-elements // lanes) + UNITS[Opcode(opcode)].LATENCY + FIXED_CYCLES

    def elaborate(self, platform):
        m = Module()
        g = self.geometry
        m.submodules.src0 = src0 = WordReader(g.buffers)
        m.submodules.src1 = src1 = WordReader(g.buffers)
        m.submodules.dst = dst = ByteWriter(g.buffers)
        wiring.connect(m, src0.port, wiring.flipped(self.read[0]))
        wiring.connect(m, src1.port, wiring.flipped(self.read[1]))
        wiring.connect(m, dst.port, wiring.flipped(self.write))
        act32_lane_pipeline(m, self.unit_class(g.sfu_lanes), {"a": src0.o, "b": src1.o}, dst.i, "y", "lanes")

        inst = self.inst
        nbytes = Signal(LENGTH_BITS + 16)
        m.d.comb += nbytes.eq(self.rows * inst.cols * 4)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                for reader, buf, addr in ((src0, inst.src0_buf, inst.src0_addr), (src1, inst.src1_buf, inst.src1_addr),
                                          (dst, inst.dst_buf, inst.dst_addr)):
                    m.d.comb += [reader.cmd.valid.eq(1), reader.cmd.payload.buf.eq(buf),
                                 reader.cmd.payload.addr.eq(addr), reader.cmd.payload.nbytes.eq(nbytes)]
                m.next = "RUN"
            with m.State("RUN"):
                with m.If(dst.idle):
                    m.d.comb += [self.done.eq(1), self.error.eq(nbytes >> LENGTH_BITS != 0)]
                    m.next = "IDLE"
        return m
