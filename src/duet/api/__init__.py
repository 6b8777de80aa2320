"""The Python API's implementation; the public names are re-exported by ``duet`` itself."""
