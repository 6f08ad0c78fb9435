"""HTTP/1.1 without I/O: bytes in, requests out; environ in, response bytes out. Used by the worker;
imports neither process side."""
