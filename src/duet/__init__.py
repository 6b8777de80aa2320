"""duet: a folder of labelled images to a monitored model in production."""

from duet.runtime import guard_triton

__version__ = "0.1.0"

guard_triton()  # TensorFlow imported first would make torch's triton segfault: see duet/runtime.py
