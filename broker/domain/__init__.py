"""The domain: plain Python that knows nothing of Flask, RQ or Redis."""
