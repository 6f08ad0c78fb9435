"""A worker process: the app, its HTTP/1.1 engine and its end of the message channel. Nothing here
runs in the master, and nothing here imports the master side."""
