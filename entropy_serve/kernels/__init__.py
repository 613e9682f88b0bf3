"""Fused GPU kernels (Triton) and the torch reference they are tested against."""
