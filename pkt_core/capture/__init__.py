"""Capture: hooks on the residual stream, capture over a dataset, the activation store, and the
prompt sources captures read.
"""
