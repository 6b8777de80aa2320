"""System utilities every layer may use. The bottom layer above ``duet.errors``: it imports
nothing else from duet, and importing it imports no torch.

- ``atomic``: atomic file writes (temp file beside the target, fsync, rename).
- ``device``: ``resolve_device`` (the ``--device`` option -> ``torch.device``, torch
  imported only then) and ``cpu_count`` (the CPUs this process may run on).
- ``cpu_caps``: what the CPU offers bf16 and int8 (AMX, AVX-512-BF16, VNNI), from /proc/cpuinfo.
- ``process``: process-wide settings: ``tune_process`` (the ``duet`` command only, never
  on import) and ``guard_triton`` (the one crash guard the library applies).
- ``threads``: thread pools whose threads run torch kernels single-threaded.
- ``progress``: progress bars and the stderr console shared by every stage.
- ``netprobe``: is a download host answering? One bounded request, startable early.
- ``extras``: which optional install (pyproject extra) a missing module belongs to.
"""
