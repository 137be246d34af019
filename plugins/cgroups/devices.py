"""The devices a container may use, and how cgroup v2 enforces it: an eBPF program.

A container's ``/dev`` holds only :data:`ALLOWED_DEVICES` (``/dev/fuse`` only when it
is made with ``fuse``), and its jobs cannot ``mknod``; the devices cgroup is the
second wall, for a device node that reaches the container some other way (a bind
mount of a host's ``/dev`` entry). On v1 it is the ``devices`` controller's list
(:mod:`plugins.cgroups.v1`). v2 has no such controller: a
``BPF_PROG_TYPE_CGROUP_DEVICE`` program, attached to the container's cgroup, answers
each open or mknod of a device, as runc and systemd do. The program stays attached
as long as the cgroup exists, across daemon restarts, and goes with it.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from pathlib import Path

from plugins.cgroups.backend import CgroupError

#: What a container may open or mknod: null zero full random urandom, tty, ptmx, pts,
#: fuse, in the devices controller's syntax. Every container's cgroup allows fuse, as
#: Garden's do: one without the node cannot make it, and an fd of it is of no use
#: without the right to mount.
ALLOWED_DEVICES = (
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:229 rwm",
)

# linux/bpf.h
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
#: Other programs (systemd's, on a parent) keep running too; all must allow.
BPF_F_ALLOW_MULTI = 2
BPF_DEVCG_DEV_CHAR = 2
#: The syscall, by machine (asm/unistd.h).
SYS_BPF = {"x86_64": 321, "aarch64": 280}
#: The size of ``union bpf_attr`` passed (the unused tail must be zero).
ATTR_SIZE = 128

# Instructions used (linux/bpf_common.h, linux/bpf.h): one ``struct bpf_insn`` each.
LDX_W = 0x61  # dst = *(u32 *)(src + off)
AND32_K = 0x54  # dst = (u32)dst & imm
RSH32_K = 0x74  # dst = (u32)dst >> imm
MOV64_K = 0xB7  # dst = imm
JNE_K = 0x55  # if dst != imm: skip off instructions
EXIT = 0x95  # return r0
R0, R1, R2, R3, R4 = 0, 1, 2, 3, 4

_libc = ctypes.CDLL(None, use_errno=True)


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _rules() -> list[tuple[int, int | None]]:
    """``(major, minor or None for any)`` of each allowed character device."""
    rules = []
    for text in ALLOWED_DEVICES:
        kind, numbers, _ = text.split()
        assert kind == "c", text  # the program below matches character devices only
        major, minor = numbers.split(":")
        rules.append((int(major), None if minor == "*" else int(minor)))
    return rules


def program() -> bytes:
    """The program: 1 (allowed) for any access to an allowed character device, else 0.

    Its context is ``struct bpf_cgroup_dev_ctx``: ``access_type`` (device type in
    the low 16 bits, the access in the high ones), ``major``, ``minor``.
    """
    code = [
        _insn(LDX_W, R2, R1, 0),  # r2 = access_type
        _insn(AND32_K, R2, imm=0xFFFF),  # r2 = the device's type
        _insn(LDX_W, R3, R1, 4),  # r3 = major
        _insn(LDX_W, R4, R1, 8),  # r4 = minor
    ]
    for major, minor in _rules():
        checks = [(R2, BPF_DEVCG_DEV_CHAR), (R3, major)] + (
            [(R4, minor)] if minor is not None else []
        )
        block = len(checks) + 2  # the checks, then r0 = 1 and exit
        for i, (register, value) in enumerate(checks):
            code.append(_insn(JNE_K, register, off=block - i - 1, imm=value))
        code += [_insn(MOV64_K, R0, imm=1), _insn(EXIT)]
    code += [_insn(MOV64_K, R0, imm=0), _insn(EXIT)]
    return b"".join(code)


def _bpf(command: int, attr: bytes) -> int:
    number = SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(0, f"no bpf syscall number known for {platform.machine()}")
    buffer = ctypes.create_string_buffer(attr.ljust(ATTR_SIZE, b"\0"), ATTR_SIZE)
    result = int(_libc.syscall(number, command, buffer, ATTR_SIZE))
    if result < 0:
        errnum = ctypes.get_errno()
        raise OSError(errnum, os.strerror(errnum))
    return result


def load() -> int:
    """Load the program; its fd (the caller closes it).

    Raises:
        OSError: the kernel refused (no eBPF for cgroups, or no privilege).
    """
    instructions = program()
    code = ctypes.create_string_buffer(instructions, len(instructions))
    license_ = ctypes.create_string_buffer(b"Apache-2.0")
    # struct { u32 prog_type, insn_cnt; u64 insns, license; u32 log_level, log_size; ... }
    attr = struct.pack(
        "<IIQQ",
        BPF_PROG_TYPE_CGROUP_DEVICE,
        len(instructions) // 8,
        ctypes.addressof(code),
        ctypes.addressof(license_),
    )
    return _bpf(BPF_PROG_LOAD, attr)


def supported() -> bool:
    """Whether this kernel loads the program (checked once, at start)."""
    try:
        os.close(load())
    except OSError:
        return False
    return True


def attach(path: Path) -> None:
    """Let the processes of the cgroup at *path* use only the allowed devices.

    Raises:
        CgroupError: the program could not be loaded or attached.
    """
    try:
        prog = load()
    except OSError as exc:
        raise CgroupError(f"cannot load the device filter for {path}: {exc.strerror}") from None
    try:
        cgroup = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # struct { u32 target_fd, attach_bpf_fd, attach_type, attach_flags; ... }
            attr = struct.pack("<IIII", cgroup, prog, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
            _bpf(BPF_PROG_ATTACH, attr)
        finally:
            os.close(cgroup)
    except OSError as exc:
        raise CgroupError(f"cannot attach the device filter to {path}: {exc.strerror}") from None
    finally:
        os.close(prog)
