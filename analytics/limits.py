"""Limits of the wire format that modules of more than one domain enforce.

The length of a key in a free-form object (``properties``, ``traits``...):
the schemas refuse longer keys, and the PHI policy caches its verdict only
for names within it, so a cached verdict also tells the fast validator the
key is valid. One number, here, so the two can never disagree.
"""

from __future__ import annotations

MAX_KEY_LENGTH = 128
