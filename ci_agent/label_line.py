"""The release labels as one ``LABEL`` line at the end of the Dockerfile, instead of the build API's
``labels`` parameter.

Docker's legacy builder (what the SDK drives) turns each entry of ``labels`` into a ``LABEL``
instruction of its own, appended to the Dockerfile, and each one creates and commits a container:
four OCI labels cost four uncached steps per release build (``python -m bench.build_labels``).
One line with all of them costs one step and sets the same labels on the final stage.

Values are written double-quoted. Anything that the Dockerfile would read differently from the
text (a ``$`` is substituted, a quote or backslash escapes, a line break ends the instruction, a
custom ``# escape=`` directive, a last line ending in a continuation) makes ``with_labels`` answer
None, and the caller falls back to the API's parameter: slower, never wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_UNSAFE = ('"', "\\", "$", "\n", "\r", "`")
# Parser directives come first in a Dockerfile, as comments: "# escape=`" changes the escape character.
_ESCAPE_DIRECTIVE = re.compile(r"^\s*#\s*escape\s*=", re.IGNORECASE)


def label_line(labels: Mapping[str, str]) -> str | None:
    """``LABEL "k"="v" ...`` setting every label, or None when one cannot be written as is."""
    if not labels:
        return None
    for key, value in labels.items():
        if not _KEY.match(key) or any(char in value for char in _UNSAFE):
            return None
    return "LABEL " + " ".join(f'"{key}"="{value}"' for key, value in labels.items())


def with_labels(dockerfile: str, labels: Mapping[str, str]) -> str | None:
    """``dockerfile`` with the labels set by its last instruction, or None (use the API's ``labels``)."""
    line = label_line(labels)
    if line is None or any(_ESCAPE_DIRECTIVE.match(head) for head in _directives(dockerfile)):
        return None
    body = dockerfile.rstrip()
    if body.endswith("\\"):
        return None  # a dangling line continuation would swallow the appended line
    return body + "\n" + line + "\n"


def _directives(dockerfile: str) -> list[str]:
    heads = []
    for text in dockerfile.splitlines():
        if not text.lstrip().startswith("#"):
            break
        heads.append(text)
    return heads
