"""The HTTP layer: the only package that imports Flask. Parse, delegate, render."""
