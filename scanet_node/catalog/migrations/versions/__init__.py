"""The revisions of the catalog schema, oldest first (``NNNN_<what>.py``)."""
