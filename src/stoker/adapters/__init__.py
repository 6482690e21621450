"""Adapters hand a loader's batches to a framework: Keras (``keras.py``)."""
