"""What every report shares: the codec every report.json goes through (codec.py), the measures
(measures.py) and the document model that renders markdown and html (document.py). Each
experiment's own report schema and renderer live in its package under nbdfork.experiments.
"""

__all__: list[str] = []
