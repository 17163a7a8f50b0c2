"""Compiler: Einsum-cascade IR, lowering of the compressed model, scheduling, ISA and program writer."""
