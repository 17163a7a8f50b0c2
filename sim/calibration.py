"""The cycle model against published FPGA LLM accelerators on the U280 (docs/performance.md).

`flightllm_u280` configures the model like FlightLLM (Zeng et al., FPGA 2024): Llama-2-7B, 225 MHz,
~3.5-bit weights (here W3 with group 64: 3.375 bits plus tile alignment), int8 activations, a
16-bit KV cache (the engine keeps non-4-bit caches as ACT32, 4 bytes per element) and dense
attention, with HBM running at the bandwidth utilisation FlightLLM reports for its decode
(65.9 %). `accllm_u280` gives our engine's figures with the `accllm` recipe on `u280-accllm`, the
HBM roofline, and the same program with weight prefetch not limited to two tile slots (the
scheduler change the model points to).
"""

from __future__ import annotations

from llmfab.boards.hardware import HardwareConfig
from llmfab.quant.model_shapes import model_shape
from llmfab.quant.recipe import Recipe

from .cycle_program import program_from_model
from .cycle_whatif import unbounded_weight_prefetch
from .hbm_timing import HbmTiming
from .op_timing import Datapath
from .performance import Simulator, bounds, power_of

PUBLISHED = {
    "flightllm": {"system": "FlightLLM (Zeng et al., FPGA 2024)", "decode_tokens_per_s": 55.0, "power_w": 45.0,
                  "hbm_utilization": 0.659,
                  "note": "U280, 225 MHz, LLaMA2-7B, ~3.5-bit mixed-precision weights with N:M sparsity, "
                          "A8, fp16 KV; 'always-on-chip decode' raises HBM bandwidth utilisation from 35.6 % to 65.9 %"},
    "accllm": {"system": "AccLLM", "decode_tokens_per_s": 164.0, "power_w": 33.0, "tokens_per_joule": 4.96,
               "note": "U280, 225 MHz, Llama-2-7B, W2A8KV4, 2:4 sparsity, Λ attention"},
}
FLIGHTLLM_HBM = HbmTiming(pc_efficiency=PUBLISHED["flightllm"]["hbm_utilization"])


def _row(label: str, program, sim: Simulator, context: int, beyond_buffer: bool = False) -> dict:
    timing = sim.decode(context, check=not beyond_buffer)
    b = bounds(timing, program, sim.hbm)
    power = power_of(timing, program)
    hw = program.hardware
    return {"configuration": label, "datapath": sim.datapath.value, "context": context,
            "decode_tokens_per_s": 1 / timing.seconds,
            "hbm_bytes_per_token": timing.hbm_bytes, "weight_bytes_per_token": timing.hbm_bytes_by_kind.get("weights", 0),
            "kv_bytes_per_token": timing.hbm_bytes_by_kind.get("kv_cache", 0),
            "hbm_utilization": timing.hbm_bytes / (timing.cycles * hw.peak_hbm_bytes_per_cycle),
            "hbm_roofline_tokens_per_s": hw.clock_hz / b.hbm_peak_cycles,
            "hbm_sustained_tokens_per_s": hw.clock_hz / b.hbm_sustained_cycles,
            "power_w": power.total_w, "tokens_per_joule": power.tokens_per_joule(1.0),
            "kv_beyond_buffer": bool(timing.overflows)}


def flightllm_u280(contexts=(128, 512)) -> list[dict]:
    """FlightLLM-like configuration of the model at each context (KV streamed past the buffer)."""
    recipe = Recipe.from_preset("w4a8kv4", name="flightllm-like", weight_bits=3, group_size=64, kv_bits=16,
                                smooth_alpha=None)
    program = program_from_model(model_shape("llama-2-7b"), recipe, HardwareConfig.from_preset("u280-default"))
    sim = Simulator(program, hbm=FLIGHTLLM_HBM, datapath=Datapath.TARGET)  # FlightLLM's datapath, not our RTL's
    return [_row("FlightLLM-like: W3 g64, A8, KV 16-bit (ACT32), dense, HBM at 65.9 %", program, sim, c,
                 beyond_buffer=True) for c in contexts]


def accllm_u280(contexts=(1024, 32768), engine: str = "u280-accllm") -> list[dict]:
    """Our engine with the accllm recipe, as compiled and with unbounded weight prefetch, on the
    target datapath and on the RTL's (op_timing.Datapath)."""
    program = program_from_model(model_shape("llama-2-7b"), Recipe.from_preset("accllm"), HardwareConfig.from_preset(engine))
    rows = []
    for datapath in (Datapath.TARGET, Datapath.RTL):
        for label, prog in ((f"accllm on {engine}, as compiled", program),
                            (f"accllm on {engine}, unbounded weight prefetch (what-if)", unbounded_weight_prefetch(program))):
            sim = Simulator(prog, datapath=datapath)
            rows.extend(_row(f"{label}, {datapath.value} datapath", prog, sim, c) for c in contexts)
    return rows


def board_comparison(engine: str = "u280-accllm", context: int = 1024) -> list[dict]:
    """The accllm Llama-2-7B decode on every shipped HBM board with the same engine (and on the
    Versal board also at the clock its pseudo-channels need), with the fit check's verdict."""
    from llmfab.boards.hardware import EngineDoesNotFitError

    rows = []
    for board, clock in (("u280", None), ("u55c", None), ("vhk158", None), ("vhk158", 400.0)):
        hardware = HardwareConfig.from_preset(engine, board=board)
        if clock is not None:
            hardware = HardwareConfig(board=hardware.board, engine=hardware.engine.replace(clock_mhz=clock))
        try:
            hardware.check_fits()
            fits = "yes"
        except EngineDoesNotFitError as err:
            fits = str(err)
        program = program_from_model(model_shape("llama-2-7b"), Recipe.from_preset("accllm"), hardware)
        row = _row(f"accllm on {board} at {hardware.engine.clock_mhz:g} MHz", program,
                   Simulator(program, datapath=Datapath.TARGET), context)  # the boards, as the target design
        row.update(board=board, clock_mhz=hardware.engine.clock_mhz, fits=fits,
                   board_hbm_gbs=hardware.board.hbm.total_bandwidth_gbs,
                   engine_hbm_gbs=hardware.peak_hbm_bytes_per_s / 1e9)
        rows.append(row)
    return rows
