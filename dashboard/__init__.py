"""Streamlit dashboard over fer_core (entry point: ``streamlit run dashboard/Home.py``)."""
