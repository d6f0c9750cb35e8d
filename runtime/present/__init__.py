"""Presentation: records and their files, overlays, the HTML report."""
