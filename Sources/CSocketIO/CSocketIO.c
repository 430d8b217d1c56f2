// Socket reads and writes without the kernel's file layer.
//
// swift-nio reads and writes sockets with read(2) and write(2). For a socket, the kernel takes
// those through the generic file path (position lock lookup, access checks, the file's iterator
// hooks) before reaching the same socket code that recv(2) and send(2) enter directly. On the
// HTTP/2 load of benchmarks/peers.py, where the gateway makes about 2.3 such calls per request,
// that path was ~3% of the gateway's kernel samples (benchmarks/results/2026-12-04-session31.md).
//
// The gateway's link wraps read, write and close (`-Xlinker --wrap=...`, Package.swift): every
// call made from code linked into the executable (swift-nio, Foundation, the gateway) lands here.
// Shared libraries (OpenSSL, nghttp2, hiredis) keep the real calls.
//
// A call tries recv/send first; on ENOTSOCK (a pipe, eventfd, timerfd, file, terminal) the
// descriptor is remembered as "not a socket" and the real call made, so such a descriptor costs
// one extra system call in its life. Closing a descriptor forgets it. Recv and send with no flags
// are read and write on a connected stream socket (recv(2), send(2)), SIGPIPE included. A
// descriptor closed by a path that does not come here (a shared library's own close) and then
// reused for a socket keeps the real calls: slower, never wrong. So do descriptors numbered
// 65,536 and above (a bit per descriptor is kept only below that).

#include "CSocketIO.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { tracked_descriptors = 1 << 16 };

// One bit per descriptor: set once a call found it is not a socket.
static unsigned char not_socket[tracked_descriptors / 8];

static inline int known_not_socket(int fd) {
    if (fd < 0 || fd >= tracked_descriptors) return 1;
    return (__atomic_load_n(&not_socket[fd >> 3], __ATOMIC_RELAXED) >> (fd & 7)) & 1;
}

static inline void remember_not_socket(int fd) {
    __atomic_fetch_or(&not_socket[fd >> 3], (unsigned char)(1u << (fd & 7)), __ATOMIC_RELAXED);
}

ssize_t gateway_io_read(int fd, void *buffer, size_t count) {
    if (!known_not_socket(fd)) {
        ssize_t received = recv(fd, buffer, count, 0);
        if (received >= 0 || errno != ENOTSOCK) return received;
        remember_not_socket(fd);
    }
    return syscall(SYS_read, fd, buffer, count);
}

ssize_t gateway_io_write(int fd, const void *buffer, size_t count) {
    if (!known_not_socket(fd)) {
        ssize_t sent = send(fd, buffer, count, 0);
        if (sent >= 0 || errno != ENOTSOCK) return sent;
        remember_not_socket(fd);
    }
    return syscall(SYS_write, fd, buffer, count);
}

int gateway_io_close(int fd) {
    if (fd >= 0 && fd < tracked_descriptors) {
        __atomic_fetch_and(&not_socket[fd >> 3], (unsigned char)~(1u << (fd & 7)), __ATOMIC_RELAXED);
    }
    return (int)syscall(SYS_close, fd);
}

int gateway_io_known_not_socket(int fd) { return known_not_socket(fd); }

#if defined(__linux__)
// The names the linker's --wrap option gives the wrapped calls.
ssize_t __wrap_read(int fd, void *buffer, size_t count) { return gateway_io_read(fd, buffer, count); }
ssize_t __wrap_write(int fd, const void *buffer, size_t count) { return gateway_io_write(fd, buffer, count); }
int __wrap_close(int fd) { return gateway_io_close(fd); }
#endif
