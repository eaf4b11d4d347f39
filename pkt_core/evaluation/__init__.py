"""Benchmarks, scored item by item: MMLU, GSM8K, HumanEval and MBPP, read offline.

The path of one evaluation, module by module:

- :mod:`~pkt_core.evaluation.tasks` reads the items (offline data packages, or the hub);
- :mod:`~pkt_core.evaluation.splits` keeps evaluation items and alignment samples apart and
  picks the fixed ``--limit`` subset;
- :mod:`~pkt_core.evaluation.prompts` turns an item into the lm-evaluation-harness prompt;
- :mod:`~pkt_core.evaluation.loglikelihood` and :mod:`~pkt_core.evaluation.generation` are the
  only two questions asked of a model (batched; greedy generation with a KV cache);
- :mod:`~pkt_core.evaluation.extraction` reads answers out of generations;
- :mod:`~pkt_core.evaluation.sandbox` runs model-written code;
- :mod:`~pkt_core.evaluation.metrics` holds pass@k, bootstrap intervals and McNemar's test;
- :mod:`~pkt_core.evaluation.cache` and :mod:`~pkt_core.evaluation.records` keep what was scored;
- :mod:`~pkt_core.evaluation.runner` ties it together; :mod:`~pkt_core.cli.evaluate` is ``pkt eval``.
- :mod:`~pkt_core.evaluation.specs` names the evaluations a transfer runs (``mmlu``, ``mmlu:rc@1``)
  and the key each is stored under.
"""
