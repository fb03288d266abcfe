"""Dropping root after binding (``trio-tlsd serve --user NAME [--group NAME]``).

The order is what makes this safe: resolve the names first (an unknown user
is an error before anything is bound), read the certificates, keys, staple
and cookie secret as root, bind the sockets (ports below 1024 need root),
then drop, before the first connection is accepted or datagram read. The
drop itself replaces the supplementary groups (the user's own, from
``initgroups``, or only ``--group`` when one is given), then the group, then
the user: the user last, because after ``setuid`` the process can no longer
change its groups. Finally we check that root cannot be regained.

Anything read after the drop, that is every file a SIGHUP reload re-reads,
must be readable by that user or group.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from dataclasses import dataclass

from ..core.errors import ConfigError

__all__ = ["Identity", "drop_privileges", "lookup_identity", "resolve_identity"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identity:
    """Who to become: a user name, its uid, and the gid to run with."""

    user: str
    uid: int
    gid: int
    group: str | None = None
    """The ``--group`` given, if any; otherwise the user's primary group is used."""

    @property
    def current(self) -> bool:
        """True if this process already runs as exactly this user and group."""
        return os.geteuid() == self.uid and os.getegid() == self.gid


def lookup_identity(user: str, group: str | None = None) -> Identity:
    """Look *user* (and *group*, a name or a numeric id) up; a ConfigError names an unknown one."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"--user {user}: no such user") from None
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"--group {group}: no such group") from None
    return Identity(entry.pw_name, entry.pw_uid, gid, group)


def resolve_identity(user: str, group: str | None = None) -> Identity:
    """As :func:`lookup_identity`, and check that this process can become it.

    Not being root is an error, unless the process already runs as that
    user and group (then the drop is a no-op): a config file shared between
    a root-started and an unprivileged service works in both.
    """
    identity = lookup_identity(user, group)
    if os.geteuid() != 0 and not identity.current:
        raise ConfigError(
            f"--user {user} needs root to switch users: trio-tlsd runs as uid {os.geteuid()}"
        )
    return identity


def drop_privileges(identity: Identity) -> None:
    """Become *identity* for good; raises RuntimeError if root could be regained."""
    if identity.current and os.getuid() == identity.uid:
        return
    if identity.group is None:
        os.initgroups(identity.user, identity.gid)
    else:
        os.setgroups([identity.gid])
    os.setgid(identity.gid)
    os.setuid(identity.uid)  # sets real, effective and saved uid when root
    if identity.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:  # pragma: no cover - the kernel refused to drop
            raise RuntimeError(f"could regain root after switching to user {identity.user}")
    logger.info(
        "dropped privileges: now uid %d (%s), gid %d",
        os.getuid(),
        identity.user,
        os.getgid(),
    )
