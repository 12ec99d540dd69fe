"""The handlers kittiwake provides, under their James names (see ``hooks/loader.py``)."""
