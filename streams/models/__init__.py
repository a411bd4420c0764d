"""Model files: the manifest (what exists, where it goes), downloads that resume and verify, and
the lock file that pins what was downloaded. Front ends call :mod:`streams.models.manager`."""
