"""System utilities every layer may use: atomic writes, thread pools, progress, the torch device,
CPU capabilities, process tuning, the network probe and the optional-install map.

The bottom layer: it imports nothing from duet except ``duet.errors``.
"""
