"""The master process: supervision, the hand-off of connections, messages between workers and
the control socket. Nothing here runs in a worker, and nothing here imports the worker side."""
