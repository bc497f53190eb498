#define _GNU_SOURCE
#include "CURingShim.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <liburing.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

const unsigned sticky_iosqe_io_link = IOSQE_IO_LINK;
const unsigned sticky_iosqe_io_hardlink = IOSQE_IO_HARDLINK;
const unsigned sticky_iosqe_cqe_skip_success = IOSQE_CQE_SKIP_SUCCESS;
const unsigned sticky_iosqe_buffer_select = IOSQE_BUFFER_SELECT;
const short sticky_pollrdhup = POLLRDHUP;

ssize_t sticky_splice(int fd_in, int fd_out, size_t len) {
    for (;;) {
        ssize_t n = splice(fd_in, NULL, fd_out, NULL, len, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        return -errno;
    }
}

int sticky_pipe_nonblocking(int fds[2]) {
    return pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0 ? -errno : 0;
}

int sticky_set_pipe_size(int fd, int bytes) {
    int r = fcntl(fd, F_SETPIPE_SZ, bytes);
    return r < 0 ? -errno : r;
}

// Golden-ratio multiplier: spreads nearby addresses (a /24 of clients) over
// the workers instead of striping them by their low bits.
#define STEER_MUL 0x9E3779B1u

static uint32_t prefix_mask(unsigned prefix_len, unsigned word) {
    int bits = (int)prefix_len - (int)(word * 32);
    if (bits <= 0) return 0;
    if (bits >= 32) return 0xFFFFFFFFu;
    return 0xFFFFFFFFu << (32 - bits);
}

unsigned sticky_reuseport_worker(const uint32_t *words, int nwords, unsigned prefix_len, unsigned groups) {
    uint32_t a = 0;
    for (int i = 0; i < nwords; i++) a ^= words[i] & prefix_mask(prefix_len, (unsigned)i);
    a *= STEER_MUL;
    a >>= 16;
    return groups ? a % groups : 0;
}

int sticky_attach_reuseport_steering(int fd, int ipv6, unsigned prefix_len, unsigned groups) {
    struct sock_filter code[24];
    int n = 0;
    // At reuseport selection the skb data starts at the transport header, so
    // the source address is reached through SKF_NET_OFF.
    int words = ipv6 ? 4 : 1;
    int base = ipv6 ? 8 : 12;
    for (int i = 0; i < words; i++) {
        code[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (uint32_t)(SKF_NET_OFF + base + 4 * i));
        code[n++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_AND | BPF_K, prefix_mask(prefix_len, (unsigned)i));
        if (i > 0) code[n++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_XOR | BPF_X, 0);
        if (i < words - 1) code[n++] = (struct sock_filter)BPF_STMT(BPF_MISC | BPF_TAX, 0);
    }
    code[n++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_MUL | BPF_K, STEER_MUL);
    code[n++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_RSH | BPF_K, 16);
    code[n++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, groups);
    code[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_A, 0);
    struct sock_fprog prog = { .len = (unsigned short)n, .filter = code };
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof(prog)) < 0) return -errno;
    return 0;
}

int sticky_peer_credentials(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return -errno;
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

int sticky_accept_nonblocking(int fd) {
    for (;;) {
        int r = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (r >= 0) return r;
        if (errno == EINTR) continue;
        return -errno;
    }
}

#define STICKY_FDS_MAX 253

ssize_t sticky_send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    if (nfds < 0 || nfds > STICKY_FDS_MAX) return -EINVAL;
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    union {
        char bytes[CMSG_SPACE(sizeof(int) * STICKY_FDS_MAX)];
        struct cmsghdr align;
    } control;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (nfds > 0) {
        memset(&control, 0, sizeof(control));
        msg.msg_control = control.bytes;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    for (;;) {
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        return -errno;
    }
}

ssize_t sticky_recv_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds) {
    *nfds = 0;
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    union {
        char bytes[CMSG_SPACE(sizeof(int) * STICKY_FDS_MAX)];
        struct cmsghdr align;
    } control;
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                          .msg_control = control.bytes, .msg_controllen = sizeof(control.bytes) };
    ssize_t n;
    for (;;) {
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (n >= 0) break;
        if (errno == EINTR) continue;
        return -errno;
    }
    int overflow = (msg.msg_flags & MSG_CTRUNC) != 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *got = (int *)CMSG_DATA(c);
        for (int i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, got + i, sizeof(int));
            if (*nfds < maxfds) {
                fds[(*nfds)++] = fd;
            } else {
                close(fd);
                overflow = 1;
            }
        }
    }
    if (overflow) {
        for (int i = 0; i < *nfds; i++) close(fds[i]);
        *nfds = 0;
        return -EMSGSIZE;
    }
    return n;
}

int sticky_spawn(const char *path, char *const argv[], int32_t *pid_out) {
    posix_spawnattr_t attr;
    posix_spawn_file_actions_t actions;
    int rc = posix_spawnattr_init(&attr);
    if (rc != 0) return -rc;
    rc = posix_spawn_file_actions_init(&actions);
    if (rc != 0) {
        posix_spawnattr_destroy(&attr);
        return -rc;
    }
    // The daemon blocks its stop signals for sigtimedwait and ignores
    // SIGPIPE; both survive exec, and a successor must start clean.
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    int reset[] = {SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGCHLD};
    for (unsigned i = 0; i < sizeof reset / sizeof reset[0]; i++) sigaddset(&defaults, reset[i]);
    rc = posix_spawnattr_setsigmask(&attr, &none);
    if (rc == 0) rc = posix_spawnattr_setsigdefault(&attr, &defaults);
    if (rc == 0) rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    // Every descriptor is opened close-on-exec; this also covers one a
    // library opened without it, or one opened by another thread meanwhile.
    if (rc == 0) rc = posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    pid_t pid = 0;
    if (rc == 0) rc = posix_spawn(&pid, path, &actions, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) return -rc;
    *pid_out = pid;
    return 0;
}

// The VIP (docs/SCALING.md): one RTM_NEWADDR or RTM_DELADDR over a netlink
// socket, acknowledged. The message is a header, an ifaddrmsg and one
// IFA_LOCAL/IFA_ADDRESS pair: the NLMSG_*/RTA_* macros make that short here
// and long in Swift.
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>

int sticky_vip_change(int add, int family, const void *addr, const char *ifname) {
    unsigned ifindex = if_nametoindex(ifname);
    if (ifindex == 0) return -errno;
    int alen = family == AF_INET ? 4 : 16;
    struct {
        struct nlmsghdr nh;
        struct ifaddrmsg ifa;
        char attrs[2 * RTA_SPACE(16)];
    } req;
    memset(&req, 0, sizeof req);
    req.nh.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifaddrmsg));
    req.nh.nlmsg_type = add ? RTM_NEWADDR : RTM_DELADDR;
    req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | (add ? NLM_F_CREATE | NLM_F_REPLACE : 0);
    req.nh.nlmsg_seq = 1;
    req.ifa.ifa_family = (unsigned char)family;
    req.ifa.ifa_prefixlen = (unsigned char)(alen * 8);
    req.ifa.ifa_scope = RT_SCOPE_UNIVERSE;
    req.ifa.ifa_index = ifindex;
    unsigned short types[2] = {IFA_LOCAL, IFA_ADDRESS};
    for (int i = 0; i < 2; i++) {
        struct rtattr *rta = (struct rtattr *)((char *)&req + NLMSG_ALIGN(req.nh.nlmsg_len));
        rta->rta_type = types[i];
        rta->rta_len = RTA_LENGTH(alen);
        memcpy(RTA_DATA(rta), addr, alen);
        req.nh.nlmsg_len = NLMSG_ALIGN(req.nh.nlmsg_len) + RTA_ALIGN(rta->rta_len);
    }
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) return -errno;
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(fd, &req, req.nh.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    int result = -EPROTO;
    if (n < 0) {
        result = -errno;
    } else {
        struct nlmsghdr *h = (struct nlmsghdr *)buf;
        if (NLMSG_OK(h, (unsigned)n) && h->nlmsg_type == NLMSG_ERROR) {
            struct nlmsgerr *err = NLMSG_DATA(h);
            result = err->error;  // 0 or -errno
        }
    }
    close(fd);
    // Adding what is there, or removing what is not, is the state asked for.
    if (add && result == -EEXIST) return 0;
    if (!add && result == -EADDRNOTAVAIL) return 0;
    return result;
}

int sticky_set_freebind(int fd) {
    int one = 1;
    return setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof one) == 0 ? 0 : -errno;
}
