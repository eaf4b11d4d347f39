"""Transfer runs. SemAlign: semantic bases, layer attribution and pairing, frontier alignment training.

What comes from the full v1 paper (arXiv 2510.24208 v1) and what is reconstructed from the
v2 / ACL abstracts is marked in each module with ``PAPER_VERSION`` tags and in every run manifest.
The run every method shares (SemAlign and the peers of :mod:`pkt_core.peers`) is
:mod:`pkt_core.transfer.run_skeleton`; :func:`pkt_core.transfer.pipeline.run_transfer` is the entry point.
"""
