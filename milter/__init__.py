"""milter: a spam filter that sits in front of Postfix as an SMTP proxy."""

__version__ = "0.1.0"
