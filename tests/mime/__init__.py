"""MIME fidelity (issue 19): the parse loses nothing silently."""
