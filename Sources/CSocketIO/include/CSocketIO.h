#ifndef CSOCKETIO_H
#define CSOCKETIO_H

#include <sys/types.h>

/// `read(2)`, `write(2)` and `close(2)` as the gateway's executable sees them (its link wraps those
/// three symbols, see CSocketIO.c): on a socket, `recv(2)`/`send(2)` with no flags, which the
/// kernel serves without the file layer; anything else goes to the real call.
ssize_t gateway_io_read(int fd, void *buffer, size_t count);
ssize_t gateway_io_write(int fd, const void *buffer, size_t count);
int gateway_io_close(int fd);

/// Whether a call found `fd` is not a socket (and sends it to the real calls until it is closed).
int gateway_io_known_not_socket(int fd);

#endif
