"""A trained run in another library's format: ``ptune export run=DIR format=peft`` (peft.py)."""
