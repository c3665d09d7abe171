"""PAM authentication: a client's cleartext password checked by a PAM service of the host (``auth_pam_service``).

What PostgreSQL's ``pam`` method and the original pg_doorman do: ``pam_start(service, user)``, a conversation that
answers every prompt with the client's password, ``pam_authenticate`` and then ``pam_acct_mgmt`` (an expired or
locked account is refused even with the right password). The service file is ``/etc/pam.d/<service>``.

libpam is called through ctypes (``libpam.so.0``, Debian's libpam0g), so pg_doorman needs no compiled PAM binding.
PAM calls block (modules hash passwords, sleep after failures, talk to LDAP or Kerberos servers), so they run
in a worker thread (`pg_doorman.auth.external`); each call has its own PAM handle, nothing is shared between
threads. PAM modules such as pam_unix need to read ``/etc/shadow``: run pg_doorman as root or in the ``shadow``
group, or use a module that does not need it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from dataclasses import dataclass
from typing import Any

__all__ = ["PamCheck", "PamUnavailable", "pam_authenticate"]

log = logging.getLogger("pg_doorman.auth.pam")

# <security/_pam_types.h>
PAM_SUCCESS = 0
PAM_PROMPT_ECHO_OFF = 1
PAM_PROMPT_ECHO_ON = 2
PAM_ERROR_MSG = 3
PAM_TEXT_INFO = 4
PAM_CONV_ERR = 19
PAM_BUF_ERR = 5
PAM_RHOST = 4
PAM_SILENT = 0x8000
PAM_DISALLOW_NULL_AUTHTOK = 0x0001


class PamUnavailable(RuntimeError):
    """libpam cannot be loaded on this host."""


class _PamMessage(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class _PamResponse(ctypes.Structure):
    _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]


_CONV_FUNC = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(ctypes.POINTER(_PamMessage)),
    ctypes.POINTER(ctypes.POINTER(_PamResponse)),
    ctypes.c_void_p,
)


class _PamConv(ctypes.Structure):
    _fields_ = [("conv", _CONV_FUNC), ("appdata_ptr", ctypes.c_void_p)]


@dataclass(frozen=True, slots=True)
class _Libs:
    pam: Any
    libc: Any


@functools.cache
def _libs() -> _Libs:
    """libpam and libc with the prototypes we call (loaded once; raises PamUnavailable)."""
    try:
        pam = ctypes.CDLL(ctypes.util.find_library("pam") or "libpam.so.0")
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError as err:
        raise PamUnavailable(f"libpam is not available ({err}); install libpam0g") from None
    handle_p = ctypes.POINTER(ctypes.c_void_p)
    pam.pam_start.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(_PamConv), handle_p]
    pam.pam_start.restype = ctypes.c_int
    for name in ("pam_authenticate", "pam_acct_mgmt", "pam_end"):
        function = getattr(pam, name)
        function.argtypes = [ctypes.c_void_p, ctypes.c_int]
        function.restype = ctypes.c_int
    pam.pam_set_item.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    pam.pam_set_item.restype = ctypes.c_int
    pam.pam_strerror.argtypes = [ctypes.c_void_p, ctypes.c_int]
    pam.pam_strerror.restype = ctypes.c_char_p
    libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    libc.calloc.restype = ctypes.c_void_p
    libc.strdup.argtypes = [ctypes.c_char_p]
    libc.strdup.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free.restype = None
    return _Libs(pam, libc)


def _conversation(libs: _Libs, password: bytes) -> Any:
    """A PAM conversation that answers every prompt with ``password`` (as PostgreSQL's pam_passwd_conv_proc).

    PAM frees the replies with free(), so they are allocated with libc's calloc/strdup.
    """
    libc = libs.libc

    def converse(count: int, messages: Any, replies: Any, _appdata: Any) -> int:
        if count <= 0:
            return PAM_CONV_ERR
        array = libc.calloc(count, ctypes.sizeof(_PamResponse))
        if not array:
            return PAM_BUF_ERR
        responses = ctypes.cast(array, ctypes.POINTER(_PamResponse))
        for index in range(count):
            message = messages[index].contents
            if message.msg_style in (PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON):
                answer = libc.strdup(password)
                if not answer:
                    for done in range(index):
                        libc.free(responses[done].resp)
                    libc.free(array)
                    return PAM_BUF_ERR
                responses[index].resp = answer
            elif message.msg_style == PAM_ERROR_MSG and message.msg:
                log.info("PAM: %s", message.msg.decode("utf-8", "replace"))
        replies[0] = responses
        return PAM_SUCCESS

    return _CONV_FUNC(converse)


def pam_authenticate(service: str, user: str, password: str, *, remote_host: str = "") -> str | None:
    """Run the PAM ``service`` for ``user`` with ``password``: None when PAM admits the user, else why not.

    Blocking: call it from a worker thread. ``remote_host`` becomes PAM_RHOST (for pam_access and logging).
    """
    libs = _libs()
    pam = libs.pam
    secret = password.encode("utf-8")
    if b"\x00" in secret:
        return "password contains a NUL byte"
    conversation = _conversation(libs, secret)
    conv = _PamConv(conversation, None)
    handle = ctypes.c_void_p()
    status = pam.pam_start(service.encode(), user.encode("utf-8"), ctypes.byref(conv), ctypes.byref(handle))
    if status != PAM_SUCCESS:
        return f"PAM could not start service {service!r} (error {status})"
    try:
        if remote_host:
            pam.pam_set_item(handle, PAM_RHOST, ctypes.c_char_p(remote_host.encode()))
        status = pam.pam_authenticate(handle, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK)
        if status != PAM_SUCCESS:
            return f"PAM authentication failed: {_strerror(pam, handle, status)}"
        status = pam.pam_acct_mgmt(handle, PAM_SILENT)
        if status != PAM_SUCCESS:
            return f"PAM account check failed: {_strerror(pam, handle, status)}"
        return None
    finally:
        pam.pam_end(handle, status)


def _strerror(pam: Any, handle: ctypes.c_void_p, status: int) -> str:
    text = pam.pam_strerror(handle, status)
    return text.decode("utf-8", "replace") if text else f"error {status}"


@dataclass(frozen=True, slots=True)
class PamCheck:
    """The password check of a user with ``auth_pam_service``."""

    service: str
    method = "pam"
    blocking = True

    def check(self, user: str, password: str) -> str | None:
        try:
            return pam_authenticate(self.service, user, password)
        except PamUnavailable as err:
            return str(err)
