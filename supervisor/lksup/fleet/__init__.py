"""Fleet files: the declarative description of a fleet of agents, and its loading.

Pure modules: ``durations``, ``loadexpr``, ``schema``, ``yamlsrc``, ``normalize``,
``templating``. I/O lives in ``loading`` (files), ``secrets`` (env and files at connection
time) and ``imports`` (subprocess import checks).
"""
