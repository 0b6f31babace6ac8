"""`param-decomp browse`: a static, offline component browser written from a harvest folder.

No server and no network: every page opens from the file system, and each component's data
lives in its own small page so that a run with 10^4 components stays quick to browse.
"""
