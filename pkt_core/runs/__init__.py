"""Runs on disk: the typed, versioned run format (:mod:`~pkt_core.runs.schema`), its writer, its
reader, the catalogue of run folders, and shipping runs into ``cached_runs/``.
"""
