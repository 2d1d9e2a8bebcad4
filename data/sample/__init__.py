"""The embedded sample data set: real photographs shipped by PyPI packages, annotated by hand."""
