"""fer_core: facial emotion recognition on real and synthetic faces."""

__version__ = "0.1.0"
