#!/usr/bin/python3
"""A shared disk that hangs on demand: a FUSE pass-through of BACKING at
MOUNTPOINT whose every operation blocks while it is told to hang.

    hangfs.py BACKING MOUNTPOINT CONTROL_SOCKET

Prints "ready" on stdout once mounted. Control: connect to CONTROL_SOCKET
(a unix stream socket), send one line, read "ok":
    hang   every file operation from now on blocks (like a SAN path gone)
    go     blocked and later operations proceed
    count  answers "ok N": operations blocked right now

Killing the process leaves the mount answering ENOTCONN (a vanished
path); the tests unmount it lazily. Debian: python3-fusepy, fuse3.
"""
import errno
import os
import socket
import sys
import threading

import fusepy as fuse


class HangFS(fuse.Operations):
    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.open_gate = threading.Event()
        self.open_gate.set()
        self.mutex = threading.Lock()
        self.blocked = 0

    def __call__(self, op, path, *args):
        if op not in ("init", "destroy") and not self.open_gate.is_set():
            with self.mutex:
                self.blocked += 1
            self.open_gate.wait()
            with self.mutex:
                self.blocked -= 1
        if not hasattr(self, op):
            raise fuse.FuseOSError(errno.EFAULT)
        return getattr(self, op)(self.root + path, *args)

    def init(self, path):
        print("ready", flush=True)

    def access(self, path, mode):
        if not os.access(path, mode):
            raise fuse.FuseOSError(errno.EACCES)

    def getattr(self, path, fh=None):
        st = os.lstat(path)
        return {k: getattr(st, k) for k in (
            "st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime",
            "st_nlink", "st_size", "st_uid", "st_ino", "st_dev")}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(path)

    def readlink(self, path):
        return os.readlink(path)

    def statfs(self, path):
        sv = os.statvfs(path)
        return {k: getattr(sv, k) for k in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
            "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

    chmod = os.chmod
    mkdir = os.mkdir
    rmdir = os.rmdir
    unlink = os.unlink

    def chown(self, path, uid, gid):
        os.lchown(path, uid, gid)

    def mknod(self, path, mode, dev):
        os.mknod(path, mode, dev)

    def symlink(self, target, source):
        os.symlink(source, target)

    def link(self, target, source):
        os.link(self.root + source, target)

    def rename(self, old, new):
        os.rename(old, self.root + new)

    def utimens(self, path, times=None):
        os.utime(path, times)

    def truncate(self, path, length, fh=None):
        with open(path, "r+") as f:
            f.truncate(length)

    def open(self, path, flags):
        return os.open(path, flags)

    def create(self, path, mode, fi=None):
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        os.fsync(fh)

    def release(self, path, fh):
        os.close(fh)


# No `lock` operation (nor any attribute of that name): the kernel then
# keeps POSIX and OFD locks itself, as on a local disk, which is what
# cohost's instance lock needs.


def control(fs, sock_path):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(sock_path)
    except FileNotFoundError:
        pass
    srv.bind(sock_path)
    srv.listen(8)
    while True:
        conn, _ = srv.accept()
        try:
            answer(fs, conn)
        except OSError:
            pass  # the client did not wait for the answer (a test's cleanup)
        finally:
            conn.close()


def answer(fs, conn):
    line = conn.makefile().readline().strip()
    if line == "hang":
        fs.open_gate.clear()
        conn.sendall(b"ok\n")
    elif line == "go":
        fs.open_gate.set()
        conn.sendall(b"ok\n")
    elif line == "count":
        with fs.mutex:
            n = fs.blocked
        conn.sendall(f"ok {n}\n".encode())
    else:
        conn.sendall(b"error: hang, go or count\n")


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    backing, mountpoint, sock_path = sys.argv[1:]
    fs = HangFS(backing)
    threading.Thread(target=control, args=(fs, sock_path), daemon=True).start()
    fuse.FUSE(fs, mountpoint, foreground=True, nothreads=False,
              allow_other=True, default_permissions=True, fsname="hangfs")


if __name__ == "__main__":
    main()
