"""Parts of the pyfuse3 Operations (with vfile.fs, the only importers of pyfuse3).

base: shared state, helpers and the one errno mapping; dirs: directory
handles; meta: statfs, access, xattrs. `vfile.fs.VFileOperations` combines them.
"""
