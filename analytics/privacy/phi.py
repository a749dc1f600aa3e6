"""What of an event is sealed, taking it out before anything is written,
and putting it back for readers allowed to see it.

Default-deny: every value under ``properties``, ``traits``, ``context`` and
``metadata`` (where Segment's free-form fields go: names, titles,
categories, group ids, track names stored as ``custom``...) is sealed
unless its path is declared clear, plus ``userId`` and ``anonymousId``
always. What is declared clear (:class:`ClearTree`): the structural fields
of :data:`BUILTIN_CLEAR`, and per event type the ``clear`` paths of the
registry (:mod:`analytics.events.registry`). Within a declared path:

* a field whose name is a PHI name (``ANALYTICS_PHI_FIELDS`` and the
  synonyms of :data:`ALWAYS_PHI`, compared normalized: ``firstName``,
  ``first-name`` and ``FIRST_NAME`` are one name) is sealed anyway;
* a value that looks like an identifier (:mod:`analytics.privacy.screening`)
  is sealed anyway and counted (``on_screened``).

:func:`split` removes the sealed values and returns them as ``[path,
value]`` pairs (an object sealed whole is one pair); the caller seals the
pairs as one blob (one AEAD operation per event, not one per field).
:func:`merge` is the inverse.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import Any

from analytics.privacy.screening import looks_identifying, screens

Path = list[str | int]
#: Sealed values of an event: ``[path, value]`` pairs (:func:`split`).
Pairs = list[list[Any]]

#: Top-level event fields whose values are sealed unless declared clear.
NESTED_FIELDS = ("properties", "traits", "context", "metadata")
#: Top-level fields that are PHI themselves.
IDENTITY_FIELDS = ("userId", "anonymousId")
#: Where a client's ``messageId`` is sealed (a generated one is ours, not PHI).
MESSAGE_ID = "messageId"

REDACTED = "[redacted]"

#: Names that are PHI whatever the configuration, compared normalized
#: (:func:`normalize`): user ids (Segment's ``alias`` keeps the user's former
#: id as ``previousId``) and common spellings of HIPAA's 18 Safe Harbor
#: identifiers.
ALWAYS_PHI = (
    "previousId,userId,anonymousId",
    # names
    "name,firstName,lastName,fullName,middleName,givenName,familyName,surname,maidenName,"
    "username,userName,login,nickname,displayName,patientName,contactName,guardianName,"
    # contact
    "email,emailAddress,mail,phone,phoneNumber,telephone,tel,mobile,mobileNumber,cellPhone,cell,"
    "fax,faxNumber,"
    # dates
    "dob,dateOfBirth,birthDate,birthdate,birthday,birthDay,dateOfDeath,deathDate,admissionDate,"
    "dischargeDate,"
    # geography
    "address,streetAddress,address1,address2,addressLine1,addressLine2,street,city,county,"
    "zip,zipCode,postalCode,postcode,latitude,longitude,lat,lng,lon,geo,"
    # numbers
    "ssn,socialSecurityNumber,socialSecurity,mrn,medicalRecordNumber,patientId,healthPlanId,"
    "memberId,beneficiaryId,insuranceId,policyNumber,accountNumber,licenseNumber,driversLicense,"
    "certificateNumber,vin,licensePlate,serialNumber,deviceId,advertisingId,idfa,idfv,gaid,adid,"
    # network, images, biometrics
    "ip,ipAddress,url,website,photo,biometric,fingerprint,faceImage",
)

#: Structural fields that stay clear for every type (to filter and group
#: on): they describe the software and the screen, not the person. The
#: user agent is not among them: one string is no identifier, but with
#: the screen, locale and time zone it fingerprints a device; a type
#: declares ``context.userAgent`` clear where it is needed.
BUILTIN_CLEAR = (
    "context.library.name",
    "context.library.version",
    "context.locale",
    "context.timezone",
    "context.screen.width",
    "context.screen.height",
    "context.screen.density",
    "context.os.name",
    "context.os.version",
    "context.app.name",
    "context.app.version",
    "context.app.build",
    "context.device.type",
    "context.device.manufacturer",
    "context.device.model",
    "context.network.wifi",
    "context.network.cellular",
    "metadata.channel",
    "metadata.version",
)

#: A tree of clear paths: a step maps to the tree below it, or to a leaf
#: when everything below is clear: :data:`CLEAR` (declared for a type: PHI
#: names below are sealed anyway) or :data:`BUILTIN` (a built-in path: its
#: last step may be a PHI name, as ``context.library.name`` is).
ClearTree = dict[str, Any]
CLEAR = "clear"
BUILTIN = "builtin"

#: How many distinct field names a policy remembers the verdict of.
KNOWN_NAMES = 4096

_NOT_ALNUM = re.compile(r"[^0-9a-z]")


_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")


def phi_name(name: str, names: frozenset[str]) -> bool:
    """Whether field ``name`` is a PHI name of ``names`` (normalized): the
    whole name, or one of its words or two adjacent words (``ssn_last4``,
    ``patientEmail``, ``home-phone``, ``contact_zip_code``)."""
    if normalize(name) in names:
        return True
    words = [w.lower() for w in _WORDS.findall(name)]
    return any(w in names for w in words) or any(a + b in names for a, b in pairwise(words))


def normalize(name: str) -> str:
    """A field name as PHI names are compared: lower case, letters and
    digits only (``firstName``, ``first-name``, ``FIRST_NAME`` -> ``firstname``)."""
    return _NOT_ALNUM.sub("", name.lower())


def clear_tree(paths: Iterable[str], leaf: str = CLEAR) -> ClearTree:
    """The tree of dotted ``paths`` (``context.library.name``)."""
    tree: ClearTree = {}
    for path in paths:
        steps = path.split(".")
        node = tree
        for step in steps[:-1]:
            below = node.setdefault(step, {})
            if type(below) is str:
                break
            node = below
        else:
            node[steps[-1]] = leaf
    return tree


def merge_trees(*trees: ClearTree) -> ClearTree:
    """One tree clearing what any of ``trees`` clears."""
    out: ClearTree = {}
    for tree in trees:
        for step, below in tree.items():
            mine = out.get(step)
            if type(mine) is str or type(below) is str:
                out[step] = BUILTIN if BUILTIN in (mine, below) else CLEAR
            else:
                out[step] = merge_trees(mine, below) if mine is not None else merge_trees(below)
    return out


BUILTIN_TREE = clear_tree(BUILTIN_CLEAR, BUILTIN)


def _builtin(_type: str | None) -> ClearTree:
    return BUILTIN_TREE


def _ignore(_count: int) -> None:
    return None


class PhiPolicy:
    """The PHI field names (compared normalized), the clear paths of each
    event type (``clear``: type name, or None for any type, to its tree;
    default: the built-in ones) and who is told about screened values."""

    def __init__(
        self,
        names: Iterable[str],
        clear: Callable[[str | None], ClearTree] = _builtin,
        on_screened: Callable[[int], None] = _ignore,
    ) -> None:
        spelled = [n for entry in (*names, *ALWAYS_PHI) for n in entry.split(",")]
        self.names = frozenset(normalize(n) for n in spelled if normalize(n))
        self.clear = clear
        self.on_screened = on_screened
        #: Verdicts by exact field name. Events repeat the same few names
        #: (and orjson hands out one interned str per name), so one dict
        #: lookup replaces the normalization for almost every key. Bounded:
        #: names are chosen by clients.
        self.known: dict[str, bool] = {}

    def is_phi(self, field: str) -> bool:
        verdict = self.known.get(field)
        if verdict is None:
            verdict = phi_name(field, self.names)
            if len(self.known) < KNOWN_NAMES and type(field) is str:
                self.known[field] = verdict
        return verdict

    def is_clear(self, event_type: str | None, path: Iterable[str]) -> bool:
        """Whether the value at ``path`` (``("properties", "plan")``) of an
        event of ``event_type`` (None: of any type) stays clear: declared,
        and no step a PHI name."""
        node: Any = self.clear(event_type)
        named = False
        for step in path:
            if type(node) is dict:
                node = node.get(step)
                if node is None:
                    return False
            named = named or self.is_phi(step)
        return node == BUILTIN or (node == CLEAR and not named)


def _clear_node(
    node: Any, tree: Any, path: tuple[str | int, ...], policy: PhiPolicy, found: Pairs, screened: list[int]
) -> Any:
    """``node`` (a dict or list below a declared path; ``tree``: its part of
    the clear tree, or a leaf) with what is not clear taken out to
    ``found``. A sealed list item leaves ``None`` in its place, so that the
    indices of the others hold. Values sealed by the screen are counted in
    ``screened[0]``."""
    if isinstance(node, dict):
        clean: dict[str, Any] = {}
        for key, value in node.items():
            below = tree if type(tree) is str else tree.get(key)
            if below is None or (below != BUILTIN and policy.is_phi(key)):
                found.append([[*path, key], value])
            elif isinstance(value, (dict, list)):
                # Only a built-in path's own last step may be a PHI name.
                below = CLEAR if below == BUILTIN else below
                clean[key] = _clear_node(value, below, (*path, key), policy, found, screened)
            elif type(below) is not str:  # only fields below a scalar were declared
                found.append([[*path, key], value])
            elif screens(value):
                found.append([[*path, key], value])
                screened[0] += 1
            else:
                clean[key] = value
        return clean
    if type(tree) is not str:  # list items have no declared paths of their own
        found.append([list(path), node])
        return None
    items: list[Any] = []
    for i, item in enumerate(node):
        if isinstance(item, (dict, list)):
            items.append(_clear_node(item, tree, (*path, i), policy, found, screened))
        elif screens(item):
            found.append([[*path, i], item])
            screened[0] += 1
            items.append(None)
        else:
            items.append(item)
    return items


def split_object(field: str, value: dict[str, Any], tree: ClearTree, policy: PhiPolicy, found: Pairs) -> dict[str, Any]:
    """The clear part of the free object ``field`` of an event whose clear
    tree is ``tree``; what is sealed is appended to ``found``. The hot path:
    an object with nothing declared clear is one pair, not walked."""
    below = tree.get(field)
    if below is None:
        found.append([[field], value])
        return {}
    screened = [0]
    cleaned: dict[str, Any] = _clear_node(value, below, (field,), policy, found, screened)
    if screened[0]:
        policy.on_screened(screened[0])
    return cleaned


def split(event: dict[str, Any], policy: PhiPolicy) -> tuple[dict[str, Any], list[list[Any]]]:
    """Split ``event`` into its clear part and its sealed ``[path, value]`` pairs."""
    found: list[list[Any]] = []
    clear = dict(event)
    for field in IDENTITY_FIELDS:
        value = clear.pop(field, None)
        if value is not None:
            found.append([[field], value])
    tree = policy.clear(event.get("type"))
    for field in NESTED_FIELDS:
        value = clear.get(field)
        if value:
            clear[field] = split_object(field, value, tree, policy, found)
    return clear, found


def merge(clear: dict[str, Any], pairs: list[list[Any]]) -> dict[str, Any]:
    """Put PHI ``pairs`` back into ``clear`` (modified in place and returned)."""
    for path, value in pairs:
        node: Any = clear
        for step in path[:-1]:
            if isinstance(step, int):
                node = node[step]
            else:
                node = node.setdefault(step, {})
        node[path[-1]] = value
    return clear


def redact(clear: dict[str, Any], pairs: list[list[Any]]) -> dict[str, Any]:
    """Like :func:`merge` but with every sealed value replaced by a marker.
    An object sealed whole keeps its field names (those that do not look
    like identifiers themselves) with the marker as values."""
    marked: Pairs = []
    for path, value in pairs:
        if len(path) == 1 and path[0] in NESTED_FIELDS and isinstance(value, dict):
            marked.append([path, {k: REDACTED for k in value if not looks_identifying(k)}])
        else:
            marked.append([path, REDACTED])
    return merge(clear, marked)
