"""Django example: ``transaction.on_commit`` submit, progress view, signal receiver."""
