// Only what Swift cannot take from liburing.h and the libc headers directly:
// function-like macros, _GNU_SOURCE-only calls, and BPF structs built from
// macros. Everything else is called from Swift as imported.
#ifndef STICKY_CURING_SHIM_H
#define STICKY_CURING_SHIM_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/eventfd.h>

// IOSQE_* are enum-derived macros that Swift does not import.
extern const unsigned sticky_iosqe_io_link;
extern const unsigned sticky_iosqe_io_hardlink;
extern const unsigned sticky_iosqe_cqe_skip_success;
extern const unsigned sticky_iosqe_buffer_select;

// POLLRDHUP is _GNU_SOURCE-only in glibc's headers.
extern const short sticky_pollrdhup;

/// splice(2) with SPLICE_F_NONBLOCK | SPLICE_F_MOVE; glibc declares it only
/// under _GNU_SOURCE. Returns bytes moved, 0 on EOF, or -errno.
ssize_t sticky_splice(int fd_in, int fd_out, size_t len);

/// pipe2(O_NONBLOCK | O_CLOEXEC), _GNU_SOURCE-only too. Returns 0 or -errno.
int sticky_pipe_nonblocking(int fds[2]);

/// fcntl(F_SETPIPE_SZ); returns the new size or -errno.
int sticky_set_pipe_size(int fd, int bytes);

/// Attaches a classic-BPF program to a SO_REUSEPORT group that steers each
/// connection to socket index hash(source address under prefix) % groups.
/// `ipv6` selects the header layout. Returns 0 or -errno.
int sticky_attach_reuseport_steering(int fd, int ipv6, unsigned prefix_len, unsigned groups);

/// The user-space hash that matches the BPF program above, so tests and
/// workers can tell which worker owns a client. `words` is the source
/// address as 1 (v4) or 4 (v6) big-endian 32-bit words.
unsigned sticky_reuseport_worker(const uint32_t *words, int nwords, unsigned prefix_len, unsigned groups);

/// getsockopt(SO_PEERCRED); struct ucred is _GNU_SOURCE-only. Returns 0 or -errno.
int sticky_peer_credentials(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid);

/// accept4(SOCK_NONBLOCK | SOCK_CLOEXEC), _GNU_SOURCE-only. Returns the fd or -errno.
int sticky_accept_nonblocking(int fd);

/// sendmsg(2) of `len` bytes with `nfds` descriptors attached as
/// SCM_RIGHTS (at most 253, the kernel's SCM_MAX_FD); CMSG_* are macros
/// Swift cannot import. MSG_NOSIGNAL. Returns bytes sent or -errno.
ssize_t sticky_send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);

/// recvmsg(2) into `buf`, taking any SCM_RIGHTS descriptors (close-on-exec,
/// MSG_CMSG_CLOEXEC) into `fds`, up to `maxfds`; `*nfds` gets how many.
/// Descriptors beyond `maxfds`, or a truncated control message, are closed
/// and reported as -EMSGSIZE. Returns bytes read (0 at EOF) or -errno.
ssize_t sticky_recv_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds);

/// Starts `path` with `argv` and this process's environment as a fresh
/// process would be: no signal blocked, SIGPIPE/SIGTERM/SIGINT/SIGHUP/SIGCHLD
/// at their defaults, and no descriptor but 0, 1 and 2 inherited. The
/// upgrade's successor; returns 0 and the pid, or -errno (exec errors too).
int sticky_spawn(const char *path, char *const argv[], int32_t *pid);

/// Adds (`add` 1) or removes the host address `addr` (4 or 16 bytes in
/// network order, by `family`) as a /32 or /128 on interface `ifname`,
/// over rtnetlink, and waits for the kernel's answer. Adding an address
/// already there, or removing one that is not, succeeds. 0 or -errno.
int sticky_vip_change(int add, int family, const void *addr, const char *ifname);

/// IP_FREEBIND on a socket: bind to an address not (yet) on the host.
int sticky_set_freebind(int fd);

#endif
