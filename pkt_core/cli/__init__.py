"""The ``pkt`` command line: one module per subcommand, tied together in :mod:`~pkt_core.cli.main`.
"""
