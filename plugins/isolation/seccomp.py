"""Seccomp profiles (the OCI/Docker JSON format) compiled into classic BPF for the init.

A profile is compiled with libseccomp (``libseccomp.so.2`` through ctypes: the
daemon's venv need not match the system Python that ``python3-seccomp`` is built
for) into two filters, one per capability set a Corral job can have: none (an
unprivileged job) and :data:`PRIVILEGED_CAPS` (a privileged one; :data:`ADMIN_CAPS`
in a container made with ``fuse``). The init loads what every job shares once,
and each job the rest of its own just before its exec (see README.md here).

The rules are read as runc and Podman read them: ``defaultAction`` (with
``defaultErrnoRet``), ``archMap`` (the sub-architectures of x86_64 share the
filter), and each ``syscalls`` entry's ``names``, ``action``, ``errnoRet`` and
``args``, kept only where its ``includes``/``excludes`` match the job's
capabilities, this machine's architecture (Go's name, ``amd64``) and the running
kernel (``minKernel``).
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

#: The capabilities of a privileged job (corral_init.c privileged_caps; a test keeps them equal).
PRIVILEGED_CAPS = frozenset(
    "CAP_" + name
    for name in (
        "CHOWN DAC_OVERRIDE FSETID FOWNER SETGID SETUID SETFCAP SETPCAP "
        "NET_BIND_SERVICE SYS_CHROOT KILL AUDIT_WRITE NET_RAW"
    ).split()
)
#: A privileged job's in a container whose jobs mount (``fuse``): CAP_SYS_ADMIN over
#: the container's own user and mount namespaces, as rootless Podman's root has it.
ADMIN_CAPS = PRIVILEGED_CAPS | {"CAP_SYS_ADMIN"}
#: The default profile: Podman's, as Debian ships it (golang-github-containers-common).
DEFAULT_PROFILE = Path("/usr/share/containers/seccomp.json")
#: Corral's rules on top of the default profile (see README.md here).
CORRAL_RULES = Path(__file__).with_name("seccomp-corral.json")
#: This machine's architecture: libseccomp's name and the profile's (Go's) name.
NATIVE_ARCH, GO_ARCH = "SCMP_ARCH_X86_64", "amd64"
#: The calls of PID 1 and of a job's set-up under the container's filter (strace of
#: both; a test runs every kind of job under a profile that allows only these), with
#: the arguments of those a profile may allow conditionally (clone: fork's flags;
#: socket: the AF_INET datagram socket of eth0's set-up). A profile's filters are
#: stacked only where its privileged filter allows them all.
INIT_CALLS: dict[str, tuple[int, ...] | None] = {
    **dict.fromkeys(
        "accept4 brk capset chdir close close_range dup2 dup3 execve exit exit_group fchown "
        "fcntl getpid getsid ioctl kill madvise mmap mprotect munmap newfstatat openat pipe2 "
        "poll prctl prlimit64 read recvfrom recvmsg restart_syscall rt_sigaction "
        "rt_sigprocmask rt_sigreturn sendmsg sendto set_robust_list setgid setgroups setresgid "
        "setresuid setsid setsockopt setuid signalfd4 wait4 waitid write".split()
    ),
    "clone": (0x01200011,),  # SIGCHLD | CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID
    "socket": (2, 0x80002, 0),  # AF_INET, SOCK_DGRAM | SOCK_CLOEXEC
}
#: The most argument combinations :func:`_answers_all` tries.
MAX_CELLS = 100_000
#: The kernel takes at most this many BPF instructions (BPF_MAXINSNS).
MAX_INSTRUCTIONS = 4096
#: A profile file larger than this is refused unread.
MAX_PROFILE_BYTES = 4 * 1024 * 1024

#: seccomp.h: actions (SCMP_ACT_*); ERRNO and TRACE carry a 16-bit value.
_ACTIONS = {
    "SCMP_ACT_KILL": 0x00000000,
    "SCMP_ACT_KILL_THREAD": 0x00000000,
    "SCMP_ACT_KILL_PROCESS": 0x80000000,
    "SCMP_ACT_TRAP": 0x00030000,
    "SCMP_ACT_ERRNO": 0x00050000,
    "SCMP_ACT_TRACE": 0x7FF00000,
    "SCMP_ACT_LOG": 0x7FFC0000,
    "SCMP_ACT_ALLOW": 0x7FFF0000,
}
_WITH_VALUE = {"SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"}
#: enum scmp_compare
_OPS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
_NR_SCMP_ERROR = -1
#: enum scmp_filter_attr SCMP_FLTATR_CTL_OPTIMIZE, and its value for a binary tree.
_ATTR_OPTIMIZE, _BINARY_TREE = 8, 2


class ProfileError(ValueError):
    """A profile cannot be read or compiled; the message names the file and the reason."""


class Filters(NamedTuple):
    """A profile's BPF programs (``struct sock_filter`` arrays) for each kind of job."""

    unprivileged: bytes
    privileged: bytes
    #: What an unprivileged job adds to ``privileged`` to be filtered as ``unprivileged``
    #: (b"": nothing), when the profile allows it (:func:`_stacked_rest`); else None.
    unprivileged_rest: bytes | None = None

    def spec_fields(self) -> tuple[str, str, str]:
        """The launch spec's ``seccomp CONTAINER PRIVILEGED UNPRIVILEGED`` ("-": none).

        Stacked where the profile allows it: PID 1 loads the privileged filter once,
        every job inherits it, and an unprivileged job adds its few rules. The kernel
        frees nothing and compiles nothing per job then; loading the whole filter in
        each job costs ~0.3 ms of its start and exit (bench/README.md).
        """
        if self.unprivileged_rest is not None:
            return (self.privileged.hex(), "-", self.unprivileged_rest.hex() or "-")
        return ("-", self.privileged.hex(), self.unprivileged.hex())


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _library() -> ctypes.CDLL:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    return lib


_lib: ctypes.CDLL | None = None


def _libseccomp() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        _lib = _library()
    return _lib


def kernel_version(release: str | None = None) -> tuple[int, ...]:
    """The running kernel's version (``6.1.0-18-amd64`` is (6, 1, 0))."""
    match = re.match(r"(\d+(?:\.\d+)*)", release or os.uname().release)
    return tuple(int(p) for p in match.group(1).split(".")) if match else (0,)


def read_profile(path: Path) -> dict[str, Any]:
    """The profile in the file *path*, parsed (not yet checked)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise ProfileError(f"seccomp profile {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO would block
            raise ProfileError(f"seccomp profile {path}: not a regular file")
        data = os.read(fd, MAX_PROFILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_PROFILE_BYTES:
        raise ProfileError(f"seccomp profile {path}: larger than {MAX_PROFILE_BYTES} bytes")
    try:
        profile = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProfileError(f"seccomp profile {path}: not JSON: {exc}") from None
    if not isinstance(profile, dict):
        raise ProfileError(f"seccomp profile {path}: not a JSON object")
    return profile


def with_rules(profile: Mapping[str, Any], rules: Mapping[str, Any]) -> dict[str, Any]:
    """*profile* with the ``syscalls`` entries of *rules* in place of its own for those names."""
    replaced = {name for entry in _entries(rules) for name in _strings(entry, "names")}
    kept = []
    for entry in _entries(profile):
        names = [n for n in _strings(entry, "names") if n not in replaced]
        if names:
            kept.append({**entry, "names": names})
    return {**profile, "syscalls": kept + list(_entries(rules))}


def compile_profile(
    profile: Mapping[str, Any],
    kernel: tuple[int, ...] | None = None,
    strict: bool = True,
    privileged_caps: frozenset[str] = PRIVILEGED_CAPS,
) -> tuple[Filters, list[str]]:
    """Compile *profile* into its two filters, the privileged one for *privileged_caps*.

    Returns:
        The filters, and the syscall names libseccomp does not know, which were
        skipped (only when not *strict*).

    Raises:
        ValueError: a malformed profile, an unknown action, operator or (if
            *strict*) syscall; the message says which.
    """
    kernel = kernel or kernel_version()
    unknown: list[str] = []
    unprivileged = _compile(profile, frozenset(), kernel, strict, unknown)
    privileged = _compile(profile, privileged_caps, kernel, strict, [])
    rest = _stacked_rest(profile, kernel, privileged_caps)
    if rest is None:
        return Filters(unprivileged, privileged), unknown
    on_top = _compile(rest, frozenset(), kernel, strict, []) if rest["syscalls"] else b""
    return Filters(unprivileged, privileged, on_top), unknown


def compile_file(path: Path, privileged_caps: frozenset[str] = PRIVILEGED_CAPS) -> Filters:
    """Read and compile the profile file *path*, as it is (a client's profile).

    Raises:
        ProfileError: naming the file and the reason.
    """
    profile = read_profile(path)
    try:
        return compile_profile(profile, privileged_caps=privileged_caps)[0]
    except ValueError as exc:
        raise ProfileError(f"seccomp profile {path}: {exc}") from None


def compile_default(
    path: Path = DEFAULT_PROFILE, privileged_caps: frozenset[str] = PRIVILEGED_CAPS
) -> tuple[Filters, list[str]]:
    """The daemon's default filters: the profile file *path* with Corral's rules on top.

    A syscall name libseccomp does not know (a profile newer than the library) is
    skipped, not refused, so that an upgrade of the profile alone cannot stop the
    daemon: returned for a warning.

    Raises:
        ProfileError: naming the file and the reason.
    """
    profile = with_rules(read_profile(path), json.loads(CORRAL_RULES.read_text()))
    try:
        return compile_profile(profile, strict=False, privileged_caps=privileged_caps)
    except ValueError as exc:
        raise ProfileError(f"seccomp profile {path}: {exc}") from None


class ProfileCache:
    """Compiled profile files, by path and privileged capabilities, recompiled when the
    file changed (mtime, size, inode)."""

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._entries: dict[tuple[Path, frozenset[str]], tuple[tuple[int, int, int], Filters]] = {}

    def get(self, path: Path, privileged_caps: frozenset[str] = PRIVILEGED_CAPS) -> Filters:
        """The filters of the profile file *path*.

        Raises:
            ProfileError: the file cannot be read or compiled.
        """
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ProfileError(f"seccomp profile {path}: {exc.strerror}") from None
        version = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._entries.get((path, privileged_caps))
        if cached is not None and cached[0] == version:
            return cached[1]
        filters = compile_file(path, privileged_caps)
        self._entries.pop((path, privileged_caps), None)
        if len(self._entries) >= self._size:  # the oldest goes
            del self._entries[next(iter(self._entries))]
        self._entries[path, privileged_caps] = (version, filters)
        return filters


# -- the compiler ------------------------------------------------------------------------


def _entries(profile: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    syscalls = profile.get("syscalls") or []
    if not isinstance(syscalls, list) or not all(isinstance(e, dict) for e in syscalls):
        raise ProfileError("syscalls must be a list of objects")
    return syscalls


def _strings(entry: Mapping[str, Any], key: str) -> list[str]:
    value = entry.get(key) or []
    if isinstance(value, str) and key == "names":
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} must be a list of strings, got {value!r}")
    return value


def _action(name: Any, value: Any, errno_name: Any = None) -> int:
    """An ``SCMP_ACT_*`` code with its errno (``errnoRet``, or the old ``errno`` name)."""
    if name == "SCMP_ACT_NOTIFY":
        raise ValueError("action SCMP_ACT_NOTIFY needs a notification agent, which Corral has not")
    if not isinstance(name, str) or name not in _ACTIONS:
        raise ValueError(f"unknown action {name!r}")
    code = _ACTIONS[name]
    if name not in _WITH_VALUE:
        return code
    if value is None and isinstance(errno_name, str):
        value = getattr(errno, errno_name, None)
        if value is None:
            raise ValueError(f"unknown errno {errno_name!r}")
    if value is None:
        value = errno.EPERM  # runc's default
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF:
        raise ValueError(f"errnoRet must be an integer 0-65535, got {value!r}")
    return code | value


def _applies(entry: Mapping[str, Any], caps: frozenset[str], kernel: tuple[int, ...]) -> bool:
    """Whether the entry's includes and excludes keep it for a job with *caps*."""
    includes, excludes = entry.get("includes") or {}, entry.get("excludes") or {}
    if not isinstance(includes, dict) or not isinstance(excludes, dict):
        raise ValueError("includes and excludes must be objects")
    if includes.get("arches") and GO_ARCH not in _strings(includes, "arches"):
        return False
    if excludes.get("arches") and GO_ARCH in _strings(excludes, "arches"):
        return False
    if not set(_strings(includes, "caps")) <= caps:
        return False
    if set(_strings(excludes, "caps")) & caps:
        return False
    min_kernel = includes.get("minKernel")
    if min_kernel:
        if not isinstance(min_kernel, str) or not re.fullmatch(r"\d+(\.\d+)*", min_kernel):
            raise ValueError(f'minKernel must be a version such as "4.8", got {min_kernel!r}')
        if kernel < kernel_version(min_kernel):
            return False
    return True


def _conditions(entry: Mapping[str, Any]) -> list[list[_ArgCmp]]:
    """The argument conditions of one rule, as runc adds them: all at once, or one rule
    each when an argument is compared twice (libseccomp ANDs no two on one argument)."""
    args = entry.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, dict) for a in args):
        raise ValueError("args must be a list of objects")
    cmps = []
    for arg in args:
        index, op = arg.get("index"), arg.get("op")
        value, value_two = arg.get("value", 0), arg.get("valueTwo", 0)
        if not isinstance(index, int) or not 0 <= index <= 5:
            raise ValueError(f"args index must be 0-5, got {index!r}")
        if op not in _OPS:
            raise ValueError(f"unknown args op {op!r}")
        for v in (value, value_two):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 64:
                raise ValueError(f"args value must be an unsigned 64-bit integer, got {v!r}")
        cmps.append(_ArgCmp(index, _OPS[op], value, value_two))
    if len({c.arg for c in cmps}) < len(cmps):
        return [[c] for c in cmps]
    return [cmps]


def _compile(
    profile: Mapping[str, Any],
    caps: frozenset[str],
    kernel: tuple[int, ...],
    strict: bool,
    unknown: list[str],
) -> bytes:
    lib = _libseccomp()
    default = _action(
        profile.get("defaultAction"), profile.get("defaultErrnoRet"), profile.get("defaultErrno")
    )
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise ValueError("libseccomp refused the default action")
    try:
        # A binary tree of the syscall numbers instead of libseccomp's default list: the
        # kernel's load of the filter (at each job's start) costs 0.4 ms instead of 0.9,
        # and a syscall the kernel's cache does not answer runs ~10 comparisons, not ~400.
        if lib.seccomp_attr_set(ctx, _ATTR_OPTIMIZE, _BINARY_TREE):
            raise ValueError("libseccomp cannot make a binary tree filter")
        for arch in _arches(profile):
            token = lib.seccomp_arch_resolve_name(arch.encode())
            if token == 0:
                raise ValueError(f"unknown architecture {arch!r} in archMap")
            err = lib.seccomp_arch_add(ctx, token)
            if err not in (0, -errno.EEXIST):
                raise ValueError(f"architecture {arch}: {os.strerror(-err)}")
        for entry in _entries(profile):
            names = _strings(entry, "names")
            action = _action(entry.get("action"), entry.get("errnoRet"), entry.get("errno"))
            conditions = _conditions(entry)
            numbers = []
            for name in names:
                number = lib.seccomp_syscall_resolve_name(name.encode())
                if number != _NR_SCMP_ERROR:
                    numbers.append((name, number))
                elif strict:
                    raise ValueError(f"unknown syscall {name!r}")
                elif name not in unknown:
                    unknown.append(name)
            if not _applies(entry, caps, kernel) or action == default:
                continue  # libseccomp refuses a rule that does what the default does
            for name, number in numbers:
                for cmps in conditions:
                    array = (_ArgCmp * len(cmps))(*cmps)
                    err = lib.seccomp_rule_add_array(ctx, action, number, len(cmps), array)
                    if err:
                        raise ValueError(f"syscall {name}: libseccomp: {os.strerror(-err)}")
        return _export(lib, ctx)
    finally:
        lib.seccomp_release(ctx)


def _stacked_rest(
    profile: Mapping[str, Any],
    kernel: tuple[int, ...],
    privileged_caps: frozenset[str] = PRIVILEGED_CAPS,
) -> dict[str, Any] | None:
    """A profile that, loaded on top of the privileged filter, leaves a job filtered exactly
    as by the unprivileged one; None when this cannot be shown simply.

    The kernel runs every filter of a process and keeps the most restrictive answer
    (``seccomp_run_filters``; of two alike, the newer). The two filters differ only in
    the syscalls of entries kept for one set of capabilities and not the other. The
    rest gives each such syscall the unprivileged filter's entries for it (or the
    default action, without any) and allows everything else. That is exact when, for
    each, the privileged filter answers one action whatever the arguments, no more
    restrictive than any answer of the unprivileged entries, and those entries answer
    every argument, or the profile's default is the rest's own (allow). And PID 1 must
    be able to work under the privileged filter (:data:`INIT_CALLS`). Docker's and
    Podman's profiles are such: the rest is ``chroot`` and the audit ``socket``
    (with Corral's rules on top, nothing).
    """
    entries = _entries(profile)
    default = _action(
        profile.get("defaultAction"), profile.get("defaultErrnoRet"), profile.get("defaultErrno")
    )
    actions = [_action(e.get("action"), e.get("errnoRet"), e.get("errno")) for e in entries]

    def kept(caps: frozenset[str]) -> dict[str, list[int]]:
        """Syscall name -> the entries kept for *caps* that name it (in order)."""
        out: dict[str, list[int]] = {}
        for i, entry in enumerate(entries):
            if actions[i] != default and _applies(entry, caps, kernel):
                for name in _strings(entry, "names"):
                    out.setdefault(name, []).append(i)
        return out

    unprivileged, privileged = kept(frozenset()), kept(privileged_caps)
    allow = _ACTIONS["SCMP_ACT_ALLOW"]
    for name, args in INIT_CALLS.items():
        answers = set()
        for i in privileged.get(name, []):
            for alternative in _conditions(entries[i]):
                if alternative and args is None:
                    return None  # conditional on arguments not known here
                known = args or ()
                if all(_holds(c, known[c.arg] if c.arg < len(known) else 0) for c in alternative):
                    answers.add(actions[i])
        if (answers or {default}) != {allow}:
            return None  # PID 1 could not do its work under the privileged filter
    rest: list[dict[str, Any]] = []
    for name in sorted(unprivileged.keys() | privileged.keys()):
        mine, theirs = unprivileged.get(name, []), privileged.get(name, [])
        if mine == theirs:
            continue
        answers = {actions[i] for i in theirs} or {default}
        if len(answers) > 1 or any(_conditions(entries[i]) != [[]] for i in theirs):
            return None  # the privileged answer depends on the arguments
        floor = _precedence(answers.pop())
        covered = bool(mine) and _answers_all([_conditions(entries[i]) for i in mine])
        if mine and not covered and default != allow:
            return None  # the rest would allow what the unprivileged default refuses
        possible = {actions[i] for i in mine} | (set() if covered else {default})
        if any(_precedence(a) > floor for a in possible):
            return None
        if mine:
            rest += [{**entries[i], "names": [name], "includes": {}, "excludes": {}} for i in mine]
        else:
            rest.append(
                {
                    "names": [name],
                    "action": profile.get("defaultAction"),
                    "errnoRet": profile.get("defaultErrnoRet"),
                    "errno": profile.get("defaultErrno"),
                }
            )
    return {"defaultAction": "SCMP_ACT_ALLOW", "archMap": profile.get("archMap"), "syscalls": rest}


def _answers_all(rules: list[list[list[_ArgCmp]]]) -> bool:
    """Whether, for any arguments, one of *rules* (each a list of alternatives, each a list
    of comparisons that must all hold) matches.

    Tried at a point of each cell the rules' constants cut each argument's range into
    (their values and the values next to them): a comparison answers alike in a whole
    cell. Masked comparisons do not cut ranges into cells, and too many cells are not
    tried: not shown (False).
    """
    cmps = [c for rule in rules for alternative in rule for c in alternative]
    if any(c.op == _OPS["SCMP_CMP_MASKED_EQ"] for c in cmps):
        return False
    points: dict[int, set[int]] = {}
    for c in cmps:
        points.setdefault(c.arg, {0, (1 << 64) - 1}).update(
            v for v in (c.datum_a - 1, c.datum_a, c.datum_a + 1) if 0 <= v < 1 << 64
        )
    if math.prod(len(p) for p in points.values()) > MAX_CELLS:
        return False
    indexes = sorted(points)
    for values in itertools.product(*(sorted(points[i]) for i in indexes)):
        args = dict(zip(indexes, values, strict=True))
        if not any(
            all(_holds(c, args[c.arg]) for c in alternative)
            for rule in rules
            for alternative in rule
        ):
            return False
    return True


#: What each comparison (``enum scmp_compare``) asks of an argument's value.
_COMPARE: dict[int, Callable[[int, _ArgCmp], bool]] = {
    _OPS["SCMP_CMP_NE"]: lambda v, c: v != c.datum_a,
    _OPS["SCMP_CMP_LT"]: lambda v, c: v < c.datum_a,
    _OPS["SCMP_CMP_LE"]: lambda v, c: v <= c.datum_a,
    _OPS["SCMP_CMP_EQ"]: lambda v, c: v == c.datum_a,
    _OPS["SCMP_CMP_GE"]: lambda v, c: v >= c.datum_a,
    _OPS["SCMP_CMP_GT"]: lambda v, c: v > c.datum_a,
    _OPS["SCMP_CMP_MASKED_EQ"]: lambda v, c: v & c.datum_a == c.datum_b,
}


def _holds(cmp: _ArgCmp, value: int) -> bool:
    return _COMPARE[cmp.op](value, cmp)


def _precedence(action: int) -> int:
    """The kernel's order of actions: the lower, the more restrictive (``ACTION_ONLY``)."""
    value = action & 0xFFFF0000
    return value - (1 << 32) if value & 0x80000000 else value


def _arches(profile: Mapping[str, Any]) -> Iterable[str]:
    """The sub-architectures ``archMap`` gives x86_64 (``x86``, ``x32``), in libseccomp's names."""
    arch_map = profile.get("archMap") or []
    if not isinstance(arch_map, list) or not all(isinstance(a, dict) for a in arch_map):
        raise ValueError("archMap must be a list of objects")
    for entry in arch_map:
        if entry.get("architecture") == NATIVE_ARCH:
            for sub in _strings(entry, "subArchitectures"):
                yield sub.removeprefix("SCMP_ARCH_").lower()


def _export(lib: ctypes.CDLL, ctx: int) -> bytes:
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        err = lib.seccomp_export_bpf(ctx, fd)
        if err:
            raise ValueError(f"libseccomp cannot export the filter: {os.strerror(-err)}")
        program = os.pread(fd, 8 * (MAX_INSTRUCTIONS + 1), 0)
    finally:
        os.close(fd)
    if len(program) > 8 * MAX_INSTRUCTIONS:
        raise ValueError(f"the filter is longer than the kernel's {MAX_INSTRUCTIONS} instructions")
    return program
