"""callm: find abnormal moments in video and explain them."""

__version__ = "0.1.0"
