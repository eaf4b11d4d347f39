"""Figures: one spec per figure of each app page, the plotly and matplotlib renderers, the paper
preset, export, and projections of probe states.
"""
