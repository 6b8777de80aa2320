"""duet: a folder of labelled images to a monitored model in production."""

__version__ = "0.1.0"
