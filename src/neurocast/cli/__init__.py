"""Top floor: the ``neurocast`` command line (click). It parses, calls the Python API, prints."""
