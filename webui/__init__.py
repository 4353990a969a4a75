"""Lookalike's web UI: a Gradio front end over the core (`retrieval`), used by app.py.

handlers: the endpoint functions; texts: the tabs' explanations; layout: the Blocks app and its
launch settings; start: finding the index, or restoring it from a Hub dataset repo.
"""
