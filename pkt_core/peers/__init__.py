"""SemAlign's peers, run on the same data, seeds and run format (docs/method.md section 6).

- :mod:`pkt_core.peers.seeking`: Seeking Neural Nuggets (Zhong et al., ICLR 2024), built on
  :mod:`~pkt_core.peers.sensitivity` and :mod:`~pkt_core.peers.subblock`;
- :mod:`pkt_core.peers.laten`: LaTen, Locate-then-Align (Tan et al., ACL 2025);
- :mod:`pkt_core.peers.distillation`: the controls, logit distillation and plain fine-tuning,
  with SemAlign's own trainable budget.

Each is a trainer for :func:`pkt_core.transfer.pipeline.run_transfer` (``config.method``), which
writes the run folder every method shares. :mod:`~pkt_core.peers.sublayers` knows the inside of a
decoder block per family.
"""
