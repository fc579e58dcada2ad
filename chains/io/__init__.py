"""Outside data in and out, shared by the CLI and the server: input files read lazily and bounded
(``inputs``, ``text_file``), records written as they finish (``sinks``)."""
