"""Results of a matrix run: the typed report.json schema (schema.py) and its rendering (render.py).

Kept free of imports so that reading or writing the schema (the harness, the guest) does not
load matplotlib; import `nbdfork.report.schema` or `nbdfork.report.render` directly.
"""

__all__: list[str] = []
