"""The product core: routing, chat session and the two shells (stdin runner, TUI); no torch here."""
