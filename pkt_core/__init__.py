"""PKT Studio core library: cross-scale parametric knowledge transfer between causal LMs.

The library never imports Streamlit; the app in ``app/`` only reads runs and calls it.
"""

__version__ = "0.1.0"
