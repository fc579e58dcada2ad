"""What a chain is: prompt files (format, validation, YAML from outside, where files are found), the
hand-written chain definitions and the registry of chain names.

Nothing here imports LangChain until a chain is compiled, so that ``runner.py list``/``show`` stay fast.
"""
