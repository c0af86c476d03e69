"""Hosting livekit-agents agents (``runtime: livekit-agents``) in lksup's job processes.

* ``adapter``  the one module that touches the SDK's private names (its version window)
* ``runtime``  the job process's loop for SDK agents, behind lksup's IPC
* ``threads``  the job host of ``job_executor: thread``: SDK jobs on threads of one process
* ``localmodels``  imported by a base template: loads the SDK's local VAD and end-of-turn models
* ``introspect``  ``lksup init --from``: reads an SDK agent's options, in a child process
  of the CLI

Everything here runs in child processes only (job processes; ``introspect`` in the CLI's
child): the supervisor and the CLI never import it.
"""
