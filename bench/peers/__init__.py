"""pi-cicd side by side with ouroboros and Debian's webhook: ``python -m bench.peers`` (see ``__main__``)."""
