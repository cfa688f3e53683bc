"""Fork a process straight into its cgroup, as the caller's sibling: clone3(2) with
CLONE_INTO_CGROUP and CLONE_PARENT.

A host that is forked and then joins its cgroup (a write to cgroup.procs) waits for an RCU grace
period in the kernel on every join that does not follow another within a few milliseconds (5-19
ms on the development machine), before any of its driver runs. A process created in its cgroup
migrates nothing. With CLONE_PARENT the new process is the child of the caller's parent (the
supervisor, which reaps it), so the host template needs no double fork either.

Python has no binding for clone3, so it is called through ctypes, doing what glibc's fork() does
and a raw system call skips: the kernel writes the child's thread id where glibc keeps it
(CLONE_CHILD_SETTID at the address glibc registered, read back with PR_GET_TID_ADDRESS; raise(),
PI and error-checking mutexes use it) and the child registers glibc's robust-futex list again;
Python's own fork bookkeeping runs through PyOS_BeforeFork and PyOS_AfterFork_*. glibc's locks
(malloc arenas, stdio) need no reset because only a single-threaded process may call it (the
template, which checks). Where any of it is missing, `thread_state` or `fork` raises and the
template forks as before.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import threading
from dataclasses import dataclass
from typing import Final

SYS_CLONE3: Final = 435  # one number on every architecture (added after their tables were unified)
# (set_robust_list, get_robust_list) by machine: glibc wraps neither.
ROBUST_LIST_CALLS: Final = {"x86_64": (273, 274), "aarch64": (99, 100)}
PR_GET_TID_ADDRESS: Final = 40
CLONE_PARENT: Final = 0x0000_8000
CLONE_CHILD_CLEARTID: Final = 0x0020_0000
CLONE_CHILD_SETTID: Final = 0x0100_0000
CLONE_INTO_CGROUP: Final = 0x2_0000_0000
# What tells that clone3 cannot work here for good (no such call, a seccomp profile, a v1 cgroup).
UNAVAILABLE: Final = frozenset(
    {errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG, errno.EBADF, errno.EOPNOTSUPP}
)


class _CloneArgs(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "flags",
            "pidfd",
            "child_tid",
            "parent_tid",
            "exit_signal",
            "stack",
            "stack_size",
            "tls",
            "set_tid",
            "set_tid_size",
            "cgroup",
        )
    ]


@dataclass(frozen=True)
class ThreadState:
    """What glibc registered with the kernel for the calling thread, for the child to have too."""

    tid_address: int
    robust_list: int
    robust_list_size: int
    set_robust_list: int  # the system call's number on this machine


# PyDLL keeps the GIL held across the call, as os.fork() does around fork(). The functions are
# looked up once, here: in the template before its objects are frozen (gc.freeze), not in each
# child, where the lookup would write (and so copy) shared pages.
_libc = ctypes.PyDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_before_fork = ctypes.pythonapi.PyOS_BeforeFork
_after_fork_child = ctypes.pythonapi.PyOS_AfterFork_Child
_after_fork_parent = ctypes.pythonapi.PyOS_AfterFork_Parent


def _failed(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


def thread_state() -> ThreadState:
    """This thread's registrations; raises OSError where they cannot be read or do not add up."""
    calls = ROBUST_LIST_CALLS.get(os.uname().machine)
    if calls is None:
        raise OSError(
            errno.ENOSYS, f"the robust-list system calls of {os.uname().machine} are not known here"
        )
    tid_address = ctypes.c_void_p()
    if _libc.prctl(PR_GET_TID_ADDRESS, ctypes.byref(tid_address), 0, 0, 0) != 0:
        raise _failed("prctl(PR_GET_TID_ADDRESS)")
    if (
        not tid_address.value
        or ctypes.c_int.from_address(tid_address.value).value != threading.get_native_id()
    ):
        raise OSError(errno.EINVAL, "the thread id glibc keeps is not at the address the kernel has")
    head, size = ctypes.c_void_p(), ctypes.c_size_t()
    if _syscall(ctypes.c_long(calls[1]), ctypes.c_long(0), ctypes.byref(head), ctypes.byref(size)) != 0:
        raise _failed("get_robust_list")
    return ThreadState(tid_address.value, head.value or 0, size.value, calls[0])


def fork(state: ThreadState, cgroup_fd: int | None, sibling: bool = True) -> int:
    """Like os.fork(), but the child starts in the cgroup `cgroup_fd` (a directory's descriptor;
    None: the caller's) and, with `sibling`, as a child of the caller's parent. Returns 0 in the
    child, its pid in the caller; raises OSError when the kernel refuses."""
    flags = CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID
    flags |= CLONE_INTO_CGROUP if cgroup_fd is not None else 0
    flags |= CLONE_PARENT if sibling else 0
    args = _CloneArgs(
        flags=flags,
        child_tid=state.tid_address,
        # A sibling's exit signal is the caller's own (SIGCHLD, to the parent): clone3 takes no other.
        exit_signal=0 if sibling else signal.SIGCHLD,
        cgroup=cgroup_fd or 0,
    )
    _before_fork()
    pid = _syscall(ctypes.c_long(SYS_CLONE3), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
    if pid == 0:
        _syscall(
            ctypes.c_long(state.set_robust_list),
            ctypes.c_void_p(state.robust_list),
            ctypes.c_size_t(state.robust_list_size),
        )
        _after_fork_child()
        return 0
    error = _failed("clone3") if pid < 0 else None
    _after_fork_parent()
    if error is not None:
        raise error
    return int(pid)
