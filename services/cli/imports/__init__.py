"""`pyfilter import`: another tool's configuration (and ban list) as ours.

    fail2ban.py      pyfilter import fail2ban [DIR] --out OUTDIR   (fail2ban_*.py: its parts)
    pyfilter_v1.py   pyfilter import pyfilter-v1 FILE --out OUTDIR [--bans]   (pyfilter_v1_*.py)

docs/import.md says what maps, what is translated, and what is not.
"""
