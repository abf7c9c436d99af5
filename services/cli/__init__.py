"""The `pyfilter` command: offline matching (matching.py), the API's commands (api.py)."""
