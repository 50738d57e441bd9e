"""Bridges to other IR toolkits (each needs its own extra): ``pyterrier`` (``pip install 'maw-reranker[pyterrier]'``)."""
