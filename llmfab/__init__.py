"""llmfab: take a LLaMA-family checkpoint to an FPGA accelerator (compress, compile, simulate, run)."""

__version__ = "0.1.0"
