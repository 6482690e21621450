"""Executors run the epoch plan: they turn lists of sample indices into filled batches.

``inline`` is the reference (this process, in order); ``processes`` must match it bit
for bit. Both use ``_produce.Producer`` for the per-sample work.
"""
