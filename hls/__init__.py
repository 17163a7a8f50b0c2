"""Vitis HLS C++ of the compute engine, its generator and C-simulation through g++."""
