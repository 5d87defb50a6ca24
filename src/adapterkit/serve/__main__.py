"""``python -m adapterkit.serve ...``: the command line of :func:`adapterkit.serve.main`."""

from .server import main

if __name__ == "__main__":
    main()
