"""Flask example: submit, progress view, signed HTTP callback receiver."""
