"""Data sets that ship with stoker (nothing is downloaded)."""
