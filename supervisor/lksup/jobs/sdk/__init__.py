"""Hosting livekit-agents agents (``runtime: livekit-agents``) in lksup's job processes.

* ``adapter``  the one module that touches the SDK's private names (its version window)
* ``runtime``  the job process's loop for SDK agents, behind lksup's IPC

Everything here runs in job processes only: the supervisor never imports it.
"""
