"""PKT Studio app entry: `streamlit run app/main.py`.

The app only reads runs and calls the library; every computation lives in ``pkt_core``.
Pages live in ``app/views/``; ``app/studio.py`` holds what they share.
"""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
for path in (APP_DIR.parent, APP_DIR):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import streamlit as st  # noqa: E402
import studio  # noqa: E402

from pkt_core.errors import PktError  # noqa: E402

st.set_page_config(page_title="PKT Studio", layout="wide")

PAGES = [
    st.Page("views/runs.py", title="Runs", icon=":material/table_view:", default=True),
    st.Page("views/alignment.py", title="Layer alignment", icon=":material/grid_on:"),
    st.Page("views/mapping.py", title="Layer mapping", icon=":material/account_tree:"),
    st.Page("views/projections.py", title="Projections", icon=":material/scatter_plot:"),
    st.Page("views/benchmarks.py", title="Benchmarks", icon=":material/leaderboard:"),
    st.Page("views/new_run.py", title="New run", icon=":material/play_circle:"),
]
page = st.navigation(PAGES)
st.sidebar.title("PKT Studio")
st.sidebar.caption("Cross-scale parametric knowledge transfer (SemAlign, arXiv 2510.24208): what moves from a large "
                   "model into a small one, layer by layer.")
studio.current_run_picker()
try:
    page.run()
except PktError as error:  # a run missing or damaging a file the page needs: say which, never crash
    st.error(f"This page cannot show the run: {error}")
