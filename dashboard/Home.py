"""Dashboard entry point: ``streamlit run dashboard/Home.py``."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import streamlit as st  # noqa: E402

from dashboard.ui import navigation_pages  # noqa: E402

st.set_page_config(page_title="fer_core: real vs synthetic faces", page_icon=":material/mood:", layout="wide")
st.navigation(navigation_pages()).run()
