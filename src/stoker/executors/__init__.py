"""Executors run the epoch plan: they turn lists of sample indices into filled batches.

``inline`` is the reference (this process, in order); ``processes`` (worker processes
on this machine) and ``ray`` (Ray actors on a cluster) must match it bit for bit. All
three use ``_produce.Producer`` for the per-sample work.
"""
