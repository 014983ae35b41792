"""Bridges to outside frameworks; each module here is the only one that imports its framework."""
