"""The version of convserve, in one place: the client and the server distributions both take it from here."""

__version__ = "0.2.0"
