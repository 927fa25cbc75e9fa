"""Dashboard entry point: ``streamlit run dashboard/Home.py``."""

import os
import sys
from pathlib import Path

# numba (UMAP, pynndescent) on one thread unless told otherwise, before anything imports it: on a
# 2-core machine its default of one thread per core, beside torch's, made UMAP wait 59 s for 25 s
# of work.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import streamlit as st  # noqa: E402

from dashboard.ui import navigation_pages  # noqa: E402

st.set_page_config(page_title="fer_core: real vs synthetic faces", page_icon=":material/mood:", layout="wide")
st.navigation(navigation_pages()).run()
