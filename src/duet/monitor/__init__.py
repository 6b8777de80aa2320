"""Monitoring: is production data still like the data the model was validated on?

- :mod:`duet.monitor.profile`: the reference profile written into ``RUN/profile/``
  (``write_profile``, ``ensure_profile``, ``ReferenceProfile.load``).
- :mod:`duet.monitor.signals`: what the detectors compare (``Observations``) and
  how they decide (``DriftSettings``), shared by the profile and the detectors.
- :mod:`duet.monitor.stattests`: the two-sample tests (MMD, chi-square, PSI).
- :mod:`duet.monitor.drift`: the detector registry (``REGISTRY``: name -> signal,
  description, test; a new detector is an entry there and its name in
  ``signals.DETECTORS``), the verdict
  (``compare``) and the rolling window a server keeps (``DriftMonitor``).
- :mod:`duet.monitor.imagestats`: per-image statistics (``image_stats``).
- :mod:`duet.monitor.outliers`: per-image outlier scores and the window's
  outlier-rate test (``OutlierModel``).
- :mod:`duet.monitor.estimate`: label-free accuracy estimate (``AccuracyEstimator``).
- :mod:`duet.monitor.check`: a folder of images against a run (``duet drift``).
- :mod:`duet.monitor.drift_report`: the HTML report.
- :mod:`duet.lifecycle.gate`: the champion/challenger gate of ``duet retrain``
  (``compare_predictions``, ``min_detectable_drop``).

What a server needs imports without torch::

    from duet.monitor import DriftMonitor, ReferenceProfile, image_stats
"""

from duet.monitor.drift import (
    DETECTORS,
    DetectorResult,
    DriftMonitor,
    DriftResult,
    DriftSettings,
    Observations,
    compare,
)
from duet.monitor.estimate import AccuracyEstimator
from duet.monitor.imagestats import STAT_NAMES, image_stats
from duet.monitor.outliers import OutlierModel
from duet.monitor.profile import ProfileError, ReferenceProfile, ensure_profile, load_profile, write_profile

__all__ = [
    "DETECTORS",
    "STAT_NAMES",
    "AccuracyEstimator",
    "DetectorResult",
    "DriftMonitor",
    "DriftResult",
    "DriftSettings",
    "Observations",
    "OutlierModel",
    "ProfileError",
    "ReferenceProfile",
    "compare",
    "ensure_profile",
    "image_stats",
    "load_profile",
    "write_profile",
]
