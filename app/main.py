"""PKT Studio app entry: `streamlit run app/main.py`.

The app only reads runs and calls the library; every computation lives in ``pkt_core``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
if str(REPOSITORY_ROOT) not in sys.path:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPOSITORY_ROOT))

from pkt_core.run_catalogue import default_run_roots, list_runs  # noqa: E402

st.set_page_config(page_title="PKT Studio", layout="wide")
st.title("PKT Studio")
st.caption(
    "Cross-scale parametric knowledge transfer by latent semantic alignment (SemAlign, arXiv 2510.24208) "
    "and its peers: what moves from a large model into a small one, layer by layer."
)

roots = default_run_roots(REPOSITORY_ROOT)
listings = list_runs(roots)
st.subheader("Runs")
st.write("Looking in: " + ", ".join(f"`{root}`" for root in roots))
if not listings:
    st.info(
        "No runs yet. Runs appear here when `pkt transfer` writes them, and the repository ships real runs "
        "in `cached_runs/` once they have been computed."
    )
else:
    complete = [listing.row() for listing in listings if listing.complete]
    broken = [listing.row() for listing in listings if not listing.complete]
    if complete:
        st.dataframe(complete, hide_index=True, use_container_width=True)
    if broken:
        st.warning(f"{len(broken)} run folder(s) are incomplete or unreadable and are not shown as results.")
        st.dataframe(
            [{"folder": row["folder"], "status": row["status"], "problem": row["problem"]} for row in broken],
            hide_index=True,
            use_container_width=True,
        )
