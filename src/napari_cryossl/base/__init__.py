"""What every layer shares: the options (each declared once, with its default, choices
and help, for the CLI and the dock alike) and the one progress type of long work.

Imports only the standard library.
"""
